//! A read-only, in-memory file overlay for the model and SAE loaders.
//!
//! In a browser there is no file system: the page downloads a model's files and an SAE's,
//! [`mount`]s them under a directory name, and the same loaders that read a local
//! directory (`lm::load_from_path`, `BlockDiagSae::load`) read them from memory (mounts are
//! per thread: the page has one; tests mount in the thread that loads). Paths not
//! under a mounted directory go to `std::fs`, so on the desktop nothing changes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

thread_local! {
    static MOUNTS: RefCell<BTreeMap<PathBuf, Rc<[u8]>>> = RefCell::default();
}

/// Puts `files` (name, bytes) under `dir`, replacing what was mounted there before.
pub fn mount(dir: &Path, files: impl IntoIterator<Item = (String, Vec<u8>)>) {
    MOUNTS.with(|m| {
        let mut m = m.borrow_mut();
        m.retain(|p, _| !p.starts_with(dir));
        for (name, bytes) in files {
            m.insert(dir.join(name), Rc::from(bytes));
        }
    });
}

/// Removes everything mounted under `dir`.
pub fn unmount(dir: &Path) {
    MOUNTS.with(|m| m.borrow_mut().retain(|p, _| !p.starts_with(dir)));
}

fn mounted(path: &Path) -> Option<Rc<[u8]>> {
    MOUNTS.with(|m| m.borrow().get(path).cloned())
}

fn is_mounted_dir(path: &Path) -> bool {
    MOUNTS.with(|m| m.borrow().keys().any(|p| p.parent() == Some(path)))
}

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    match mounted(path) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => std::fs::read(path),
    }
}

pub fn read_to_string(path: &Path) -> io::Result<String> {
    match mounted(path) {
        Some(bytes) => String::from_utf8(bytes.to_vec())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        None => std::fs::read_to_string(path),
    }
}

/// Something to read a file from at any offset.
pub trait ReadSeek: io::Read + io::Seek {}
impl<T: io::Read + io::Seek> ReadSeek for T {}

/// Opens a file (mounted, else on disk, buffered) for reading at any offset, with its
/// length.
pub fn open(path: &Path) -> io::Result<(Box<dyn ReadSeek>, u64)> {
    if let Some(bytes) = mounted(path) {
        let len = bytes.len() as u64;
        return Ok((Box::new(io::Cursor::new(bytes)), len));
    }
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    Ok((Box::new(io::BufReader::with_capacity(1 << 16, file)), len))
}

pub fn exists(path: &Path) -> bool {
    mounted(path).is_some() || is_mounted_dir(path) || path.exists()
}

pub fn is_file(path: &Path) -> bool {
    mounted(path).is_some() || path.is_file()
}

pub fn is_dir(path: &Path) -> bool {
    is_mounted_dir(path) || path.is_dir()
}

/// The files directly in `dir` (mounted or on disk), unsorted.
pub fn list(dir: &Path) -> io::Result<Vec<PathBuf>> {
    if is_mounted_dir(dir) {
        return Ok(MOUNTS.with(|m| {
            m.borrow()
                .keys()
                .filter(|p| p.parent() == Some(dir))
                .cloned()
                .collect()
        }));
    }
    Ok(std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_files_shadow_the_disk_and_unmount_restores_it() {
        let dir = Path::new("/attn-saes-vfs-test");
        assert!(!exists(dir));
        mount(
            dir,
            [("a.json".into(), b"{}".to_vec()), ("b".into(), vec![1, 2])],
        );
        assert!(is_dir(dir) && exists(dir) && !is_file(dir));
        assert_eq!(read_to_string(&dir.join("a.json")).unwrap(), "{}");
        assert_eq!(read(&dir.join("b")).unwrap(), vec![1, 2]);
        let (mut file, len) = open(&dir.join("b")).unwrap();
        let mut rest = Vec::new();
        io::Seek::seek(&mut file, io::SeekFrom::Start(1)).unwrap();
        io::Read::read_to_end(&mut file, &mut rest).unwrap();
        assert_eq!((len, rest), (2, vec![2]));
        let mut names = list(dir).unwrap();
        names.sort();
        assert_eq!(names, vec![dir.join("a.json"), dir.join("b")]);
        assert!(read(&dir.join("c")).is_err());
        mount(dir, [("c".into(), vec![3])]);
        assert!(!exists(&dir.join("a.json")) && is_file(&dir.join("c")));
        unmount(dir);
        assert!(!exists(dir) && read(&dir.join("c")).is_err());
    }
}
