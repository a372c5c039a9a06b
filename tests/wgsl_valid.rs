//! Every WGSL kernel of the training step (shaders/, as src/train/wgsl.rs assembles them)
//! parses and validates with naga, wgpu's shader compiler, for each activation and for
//! odd and large shapes, with and without the sparse path; each has a compute entry point
//! `main`. No GPU needed.

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
        for ((h, b, d, m), sparse) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            let dims = Dims {
                h,
                b,
                d,
                m,
                act: Activation::new(arch, 1.0),
                sparse,
                cap: h * b * m / 10,
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
                checked += 1;
            }
        }
    }
    // For each of 12 (activation, shape) pairs, with and without the sparse path: 13 kernels
    // (both column sums among them), and the 4 sparse ones where the path is available;
    // select in each of the 12 TopK / BatchTopK cases, and BatchTopK's select_count and
    // select_pick in each of its 6; AuxK's 10 in each of the 12 TopK / BatchTopK cases.
    assert_eq!(checked, 13 * 24 + 4 * 12 + 12 + 2 * 6 + 10 * 12);
}
