//! Every WGSL kernel of the training step (shaders/, as src/train/wgsl.rs assembles them)
//! parses and validates with naga, wgpu's shader compiler, for each activation and for
//! odd and large shapes, with and without the sparse path and in either matmul tiles; each
//! has a compute entry point `main` and keeps within WebGPU's 16 KiB of workgroup memory.
//! No GPU needed.

use attn_saes::sae::Architecture;
use attn_saes::train::fused_cpu::Activation;
use attn_saes::train::wgsl::Dims;

#[test]
fn every_kernel_validates_with_naga() {
    let archs = [
        Architecture::Relu,
        Architecture::TopK { k: 32 },
        Architecture::BatchTopK { k: 32 },
        Architecture::JumpRelu { bandwidth: 0.001 },
    ];
    let mut checked = 0;
    for arch in archs {
        let shapes = [(12, 4096, 64, 2048), (3, 37, 16, 50), (1, 150, 128, 70)];
        // (sparse, wide tiles): the default tiles on both paths, and the earlier ones.
        let paths = [(false, true), (true, true), (false, false)];
        for ((h, b, d, m), (sparse, wide_tiles)) in
            (shapes.into_iter()).flat_map(|s| paths.map(|p| (s, p)))
        {
            let dims = Dims {
                h,
                b,
                d,
                m,
                act: Activation::new(arch, 1.0),
                sparse,
                cap: h * b * m / 10,
                wide_tiles,
            };
            let aux = match arch {
                Architecture::TopK { .. } | Architecture::BatchTopK { .. } => dims.aux_kernels(32),
                _ => Vec::new(),
            };
            for (name, kernel) in dims.all_kernels().into_iter().chain(aux) {
                let source = kernel.text();
                let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| {
                    panic!("{name:?} ({arch:?}): {}", e.emit_to_string(source))
                });
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::empty(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name:?} ({arch:?}): {}", e.emit_to_string(source)));
                let entry = module
                    .entry_points
                    .iter()
                    .find(|e| e.name == "main")
                    .unwrap_or_else(|| panic!("{name:?}: no entry point main"));
                assert_eq!(entry.stage, naga::ShaderStage::Compute, "{name:?}");
                // Within WebGPU's default workgroup memory.
                let shared = workgroup_bytes(&module);
                assert!(shared <= 16_384, "{name:?} ({arch:?}): {shared} bytes");
                checked += 1;
            }
        }
    }
    // For each of 12 (activation, shape) pairs, dense, sparse and in 64 x 64 tiles: 18
    // kernels (both column sums and their totals, the feature statistics and theirs, the
    // two split products and their sums among them), and the 4 sparse ones where the path
    // is available; select in each of the 18 TopK / BatchTopK cases, and BatchTopK's
    // select_count and select_pick in each of its 9; AuxK's 13 in each of the 18 TopK /
    // BatchTopK cases.
    assert_eq!(checked, 18 * 36 + 4 * 12 + 18 + 2 * 9 + 13 * 18);
}

#[path = "../benches/coop/kernel.rs"]
mod coop_kernel;

/// The cooperative-matrix product `benches/coop_probe.rs` times on a GPU (no adapter here
/// has cooperative matrices: lavapipe 22.3 lacks VK_KHR_cooperative_matrix) parses,
/// validates with naga under the capabilities it asks for, and translates to SPIR-V, as
/// wgpu does on Vulkan, in each of the probe's layouts and blockings; and without the
/// capability naga refuses it, so the validation is not vacuous. (The kernels run, and are
/// checked against the host, in tests/wgsl_step.rs: on lavapipe only the scalar one.)
#[test]
fn the_cooperative_matrix_probe_validates_and_translates_to_spirv() {
    use coop_kernel::{CoopShape, Kernel};
    let caps =
        naga::valid::Capabilities::COOPERATIVE_MATRIX | naga::valid::Capabilities::SHADER_FLOAT16;
    let mut checked = 0;
    for (m, n, k, a_col_major) in [
        (4096, 2048, 64, false),
        (4096, 64, 2048, false),
        (64, 2048, 4096, true),
    ] {
        for shape in CoopShape::blockings(12, (m, n, k), a_col_major, 32) {
            let (tm, tn, kernel) = (shape.tm, shape.tn, shape.kernel);
            let source = shape.wgsl();
            let module = naga::front::wgsl::parse_str(&source)
                .unwrap_or_else(|e| panic!("{shape:?}: {}", e.emit_to_string(&source)));
            let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .validate(&module)
                .unwrap_or_else(|e| panic!("{shape:?}: {}", e.emit_to_string(&source)));
            // Only the scalar kernel, which has none, is valid without cooperative matrices.
            let without = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::SHADER_FLOAT16,
            )
            .validate(&module);
            assert_eq!(without.is_ok(), kernel == Kernel::Scalar, "{shape:?}");
            let options = naga::back::spv::Options {
                lang_version: (1, 3),
                ..Default::default()
            };
            let words = naga::back::spv::write_vec(&module, &info, &options, None)
                .unwrap_or_else(|e| panic!("{shape:?}: SPIR-V: {e}"));
            // The cooperative-matrix instructions are there: OpCooperativeMatrixMulAddKHR
            // (opcode 4459) once per fragment pair in the loop's body (the staged kernel's
            // subgroups sum 2 x 2 fragments, two steps of 16 an iteration).
            let mul_adds = spirv_ops(&words).filter(|&op| op == 4459).count();
            let expected = match kernel {
                Kernel::Direct => tm * tn,
                Kernel::Staged => 8,
                Kernel::Scalar => 0,
            };
            assert_eq!(mul_adds, expected, "{shape:?}");
            let shared = workgroup_bytes(&module);
            let staged = kernel == Kernel::Staged;
            assert_eq!(shared, if staged { 8192 } else { 0 }, "{shape:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 18);
}

/// Bytes of workgroup memory a kernel declares.
fn workgroup_bytes(module: &naga::Module) -> u32 {
    (module.global_variables.iter())
        .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
        .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
        .sum()
}

/// The opcodes of a SPIR-V module's instructions, after its 5-word header.
fn spirv_ops(words: &[u32]) -> impl Iterator<Item = u32> + '_ {
    let mut at = 5;
    std::iter::from_fn(move || {
        let word = *words.get(at)?;
        at += (word >> 16).max(1) as usize;
        Some(word & 0xffff)
    })
}
