//! Device selection shared by every command: `--device auto|wgpu|cpu`.

use burn::prelude::*;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum DeviceChoice {
    /// A hardware GPU through wgpu if one is found, else the CPU.
    #[default]
    Auto,
    /// wgpu (Vulkan, Metal, DX12, WebGPU), software adapters included.
    Wgpu,
    /// burn's `flex` CPU backend.
    Cpu,
}

/// The device picked, and a sentence saying why (printed by the CLI).
pub struct SelectedDevice {
    pub device: Device,
    pub description: String,
}

/// Names of wgpu adapters that are CPU emulations, slower than the `flex` backend.
fn is_software_adapter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["llvmpipe", "lavapipe", "swiftshader", "software", "warp"]
        .iter()
        .any(|s| name.contains(s))
}

/// Opens the first wgpu adapter, returning its name, or `None` if there is none.
/// Adapter discovery panics inside wgpu on some systems without drivers, so it is caught.
fn probe_wgpu() -> Option<(Device, String)> {
    // Listing adapters does not open a device: with none, stop here rather than let the
    // device thread panic (and print) on the way to the same answer.
    if Device::enumerate(burn::tensor::DeviceType::Wgpu).is_empty() {
        return None;
    }
    std::panic::catch_unwind(|| {
        let device = Device::wgpu(Default::default());
        let name = device.identity().map(|id| id.name.clone())?;
        // Run one tiny op so a broken driver shows up here, not mid-training.
        let x = Tensor::<1>::ones([4], &device).sum().into_scalar::<f32>();
        (x == 4.0).then_some((device, name))
    })
    .ok()
    .flatten()
}

pub fn select(choice: DeviceChoice) -> anyhow::Result<SelectedDevice> {
    match choice {
        DeviceChoice::Cpu => Ok(SelectedDevice {
            device: Device::flex(),
            description: "device: CPU (burn flex backend)".into(),
        }),
        DeviceChoice::Wgpu => {
            let (device, name) = probe_wgpu().ok_or_else(|| {
                anyhow::anyhow!(
                    "--device wgpu: no wgpu adapter found (install a Vulkan/Metal/DX12 driver, \
                     or use --device cpu)"
                )
            })?;
            Ok(SelectedDevice {
                device,
                description: format!("device: wgpu adapter '{name}'"),
            })
        }
        DeviceChoice::Auto => match probe_wgpu() {
            Some((device, name)) if !is_software_adapter(&name) => Ok(SelectedDevice {
                device,
                description: format!("device: wgpu adapter '{name}' (auto)"),
            }),
            Some((_, name)) => Ok(SelectedDevice {
                device: Device::flex(),
                description: format!(
                    "device: CPU (burn flex backend; auto skipped the software wgpu adapter \
                     '{name}', use --device wgpu to force it)"
                ),
            }),
            None => Ok(SelectedDevice {
                device: Device::flex(),
                description: "device: CPU (burn flex backend; auto found no wgpu adapter)".into(),
            }),
        },
    }
}

/// Keeps freed host memory in the process for reuse instead of returning it to the system
/// after each tensor (glibc: buffers up to 32 MiB come from the heap, which is not trimmed
/// below 1 GiB). burn's CPU backend allocates and frees every intermediate tensor; with
/// glibc's defaults most of them were fresh pages, zeroed by the kernel on first touch.
/// The figures (the CPU forward about 25% faster, the main job's peak unchanged at 1.0 GB)
/// are in README.md's Benchmarks, from `cargo bench --bench forward [-- --malloc-defaults]`.
/// Up to 1 GiB of freed heap stays counted as the process's until it is reused or the
/// process exits.
/// Call it first thing in `main`; elsewhere (not glibc) it does nothing.
pub fn keep_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any thread
    // is started.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
