//! The cooperative-matrix product that `benches/coop_probe.rs` times on a GPU,
//! `tests/wgsl_valid.rs` validates with naga and `tests/wgsl_step.rs` checks against the
//! host on whatever adapter there is: `C[h] = A[h] B[h]` for each of `heads`
//! heads, f16 operands and f32 sums through WGSL's `coop_mat16x16` (wgpu's
//! EXPERIMENTAL_COOPERATIVE_MATRIX; Vulkan's VK_KHR_cooperative_matrix, tensor cores on
//! NVIDIA). Two kernels: `direct`, where one subgroup a workgroup sums a block of `tm x tn`
//! 16 x 16 fragments, loading its operands' fragments straight from the storage buffers;
//! and `staged`, where four subgroups share a 64 x 64 block, its operands copied 32 steps
//! of K at a time into workgroup memory (vec4 loads) and each subgroup summing 2 x 2
//! fragments from there. Every index and stride is a `let` of its own. A third, `scalar`,
//! sums each output in one invocation without cooperative matrices: the same buffers and
//! layouts, so that the probe's harness (buffers, read-back, the check against the host)
//! runs on adapters without them, lavapipe among them.
// Each of the three users takes part of it (tests/wgsl_valid.rs dispatches nothing).
#![allow(dead_code)]

use burn::cubecl::wgpu::wgpu;
use wgpu::util::DeviceExt;

/// A device for the probe: f16 shaders always, cooperative matrices where the adapter has
/// 16 x 16 x 16 products of f16 summed in f32.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    /// Whether the cooperative-matrix kernels can run.
    pub coop: bool,
    /// The adapter's largest subgroup.
    pub subgroup: usize,
    /// The adapter and what it offers, in lines.
    pub description: String,
}

/// Opens the first high-performance adapter; an error where there is none, or it has no
/// f16 shaders.
pub fn open() -> Result<Gpu, String> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))
    .map_err(|e| format!("no wgpu adapter: {e}"))?;
    let info = adapter.get_info();
    let features = adapter.features();
    let has_coop = features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
    let f16 = features.contains(wgpu::Features::SHADER_F16);
    let mut description = format!(
        "adapter: {} ({:?}; {} {}); cooperative matrices {has_coop}, shader f16 {f16}, \
         subgroups of {} to {}",
        info.name,
        info.backend,
        info.driver,
        info.driver_info,
        info.subgroup_min_size,
        info.subgroup_max_size
    );
    let configs = adapter.cooperative_matrix_properties();
    for p in &configs {
        description += &format!(
            "\n  cooperative matrix M={} N={} K={} operands {:?} sums {:?}",
            p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type
        );
    }
    if !f16 {
        return Err(format!("{description}\nno f16 shaders"));
    }
    use wgpu::CooperativeScalarType as S;
    let coop = has_coop
        && configs.iter().any(|p| {
            (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
                && p.ab_type == S::F16
                && p.cr_type == S::F32
        });
    let mut required_features = wgpu::Features::SHADER_F16;
    if coop {
        required_features |= wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: None,
        required_features,
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
        // SAFETY: the experimental feature is what is probed, on a device of the probe's own.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
    }))
    .map_err(|e| format!("{description}\nno device: {e}"))?;
    Ok(Gpu {
        device,
        queue,
        coop,
        subgroup: info.subgroup_max_size.max(1) as usize,
        description,
    })
}

/// One product's shape and layout.
#[derive(Clone, Copy, Debug)]
pub struct CoopShape {
    pub heads: usize,
    /// Rows of `A` and `C`.
    pub m: usize,
    /// Columns of `B` and `C`.
    pub n: usize,
    /// Columns of `A`, rows of `B`.
    pub k: usize,
    /// `A` stored `[K, M]` (as `X^T` in `X^T dP`) instead of `[M, K]`.
    pub a_col_major: bool,
    /// Fragments a workgroup sums, down and across: a block of `16 tm x 16 tn` outputs.
    pub tm: usize,
    pub tn: usize,
    /// The adapter's subgroup size: a workgroup is one subgroup (`direct`) or four.
    pub subgroup: usize,
    pub kernel: Kernel,
}

/// The blockings the probe tries and the test validates: (`tm`, `tn`, kernel).
pub const BLOCKINGS: [(usize, usize, Kernel); 6] = [
    (4, 4, Kernel::Direct),
    (2, 4, Kernel::Direct),
    (2, 2, Kernel::Direct),
    (1, 4, Kernel::Direct),
    (4, 4, Kernel::Staged),
    (1, 1, Kernel::Scalar),
];

/// Which kernel sums the product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kernel {
    /// One subgroup a workgroup, fragments loaded from the storage buffers.
    Direct,
    /// Four subgroups a workgroup, operands through workgroup memory (64 x 64 blocks: `tm`
    /// and `tn` 4).
    Staged,
    /// No cooperative matrices: an invocation an output (16 x 16 blocks: `tm` and `tn` 1).
    Scalar,
}

impl CoopShape {
    /// Each of [`BLOCKINGS`] that fits the product `heads x [m, k] x [k, n]`, for an
    /// adapter whose subgroups are `subgroup` wide.
    pub fn blockings(
        heads: usize,
        (m, n, k): (usize, usize, usize),
        a_col_major: bool,
        subgroup: usize,
    ) -> impl Iterator<Item = CoopShape> {
        BLOCKINGS.into_iter().filter_map(move |(tm, tn, kernel)| {
            let shape = CoopShape {
                heads,
                m,
                n,
                k,
                a_col_major,
                tm,
                tn,
                subgroup,
                kernel,
            };
            shape.fits().then_some(shape)
        })
    }

    /// Workgroups to dispatch: across, down, heads.
    pub fn groups(&self) -> (u32, u32, u32) {
        (
            (self.n / (16 * self.tn)) as u32,
            (self.m / (16 * self.tm)) as u32,
            self.heads as u32,
        )
    }

    /// Whether the blocks tile the output and the fragments tile K.
    pub fn fits(&self) -> bool {
        let kernel = match self.kernel {
            Kernel::Direct => true,
            Kernel::Staged => {
                (self.tm, self.tn) == (4, 4)
                    && self.k.is_multiple_of(32)
                    && 512usize.is_multiple_of(4 * self.subgroup)
            }
            Kernel::Scalar => (self.tm, self.tn) == (1, 1),
        };
        kernel
            && self.m.is_multiple_of(16 * self.tm)
            && self.n.is_multiple_of(16 * self.tn)
            && self.k.is_multiple_of(16)
    }

    /// The kernel's WGSL (entry point `main`).
    pub fn wgsl(&self) -> String {
        assert!(self.fits(), "{self:?}: blocks must tile the output");
        match self.kernel {
            Kernel::Direct => self.wgsl_direct(),
            Kernel::Staged => self.wgsl_staged(),
            Kernel::Scalar => self.wgsl_scalar(),
        }
    }

    /// The `direct` kernel: one subgroup a workgroup, `tm x tn` fragments, each step of K's
    /// fragments loaded from the storage buffers.
    fn wgsl_direct(&self) -> String {
        let (m, n, k) = (self.m, self.n, self.k);
        let mut s = String::new();
        s.push_str(&header(true, "f16"));
        s.push_str(&format!(
            "@compute @workgroup_size({})\nfn main(@builtin(workgroup_id) wg: vec3<u32>) {{\n",
            self.subgroup
        ));
        s.push_str(&format!("    let row0 = wg.y * {}u;\n", 16 * self.tm));
        s.push_str(&format!("    let col0 = wg.x * {}u;\n", 16 * self.tn));
        s.push_str(&format!("    let abase = wg.z * {}u;\n", m * k));
        s.push_str(&format!("    let bbase = wg.z * {}u;\n", k * n));
        s.push_str(&format!("    let cbase = wg.z * {}u;\n", m * n));
        let a_stride = if self.a_col_major { m } else { k };
        s.push_str(&format!("    let sa = {a_stride}u;\n    let sb = {n}u;\n"));
        for i in 0..self.tm {
            for j in 0..self.tn {
                s.push_str(&format!("    var c{i}_{j} = coop_mat16x16<f32, C>();\n"));
            }
        }
        s.push_str(&format!("    for (var kk = 0u; kk < {k}u; kk += 16u) {{\n"));
        for i in 0..self.tm {
            // Fragment (row0 + 16 i, kk) of A.
            let at = if self.a_col_major {
                format!("abase + kk * {m}u + row0 + {}u", 16 * i)
            } else {
                format!("abase + (row0 + {}u) * {k}u + kk", 16 * i)
            };
            s += &load(&format!("a{i}"), 'A', ("a", &at), "sa", !self.a_col_major);
        }
        for j in 0..self.tn {
            let at = format!("bbase + kk * {n}u + col0 + {}u", 16 * j);
            s += &load(&format!("b{j}"), 'B', ("b", &at), "sb", true);
        }
        for i in 0..self.tm {
            for j in 0..self.tn {
                s.push_str(&format!(
                    "        c{i}_{j} = coopMultiplyAdd(a{i}, b{j}, c{i}_{j});\n"
                ));
            }
        }
        s.push_str("    }\n    let sc = sb;\n");
        s.push_str(&stores(self.tm, self.tn, n, "row0", "col0"));
        s
    }

    /// The `staged` kernel: a workgroup of four subgroups, a 64 x 64 block, K in steps of 32
    /// through workgroup memory (`sa`: A's 64 x 32, row-major, or column-major when A is
    /// stored `[K, M]`; `sb`: B's 32 x 64, row-major).
    fn wgsl_staged(&self) -> String {
        let (m, n, k) = (self.m, self.n, self.k);
        let threads = 4 * self.subgroup;
        let mut s = String::new();
        s.push_str(&header(true, "vec4<f16>"));
        s.push_str(
            "var<workgroup> sa: array<f16, 2048>;\nvar<workgroup> sb: array<f16, 2048>;\n\n",
        );
        s.push_str(&format!(
            "@compute @workgroup_size({threads})\n\
             fn main(@builtin(workgroup_id) wg: vec3<u32>, \
             @builtin(local_invocation_index) li: u32) {{\n"
        ));
        s.push_str("    let row0 = wg.y * 64u;\n    let col0 = wg.x * 64u;\n");
        s.push_str(&format!("    let abase = wg.z * {}u;\n", m * k));
        s.push_str(&format!("    let bbase = wg.z * {}u;\n", k * n));
        s.push_str(&format!("    let cbase = wg.z * {}u;\n", m * n));
        s.push_str(&format!("    let sg = li / {}u;\n", self.subgroup));
        s.push_str("    let r0 = (sg / 2u) * 32u;\n    let c0 = (sg % 2u) * 32u;\n");
        s.push_str("    let s32 = 32u;\n    let s64 = 64u;\n");
        s.push_str(&format!("    let sc = {n}u;\n"));
        for f in ["0_0", "0_1", "1_0", "1_1"] {
            s.push_str(&format!("    var c{f} = coop_mat16x16<f32, C>();\n"));
        }
        s.push_str(&format!("    for (var kt = 0u; kt < {k}u; kt += 32u) {{\n"));
        s.push_str(&format!(
            "        for (var v = li; v < 512u; v += {threads}u) {{\n"
        ));
        if self.a_col_major {
            // A's rows kt..kt+32 of [K, M], columns row0..row0+64: 16 vec4s a row.
            s.push_str("            let ka = v / 16u;\n            let qa = v % 16u;\n");
            s.push_str(&format!(
                "            let x = a[(abase + (kt + ka) * {m}u + row0) / 4u + qa];\n"
            ));
            s.push_str("            let at = ka * 64u + qa * 4u;\n");
        } else {
            // A's rows row0..row0+64 of [M, K], columns kt..kt+32: 8 vec4s a row.
            s.push_str("            let ra = v / 8u;\n            let qa = v % 8u;\n");
            s.push_str(&format!(
                "            let x = a[(abase + (row0 + ra) * {k}u + kt) / 4u + qa];\n"
            ));
            s.push_str("            let at = ra * 32u + qa * 4u;\n");
        }
        s.push_str("            sa[at] = x.x;\n            sa[at + 1u] = x.y;\n");
        s.push_str("            sa[at + 2u] = x.z;\n            sa[at + 3u] = x.w;\n");
        s.push_str("            let kb = v / 16u;\n            let qb = v % 16u;\n");
        s.push_str(&format!(
            "            let y = b[(bbase + (kt + kb) * {n}u + col0) / 4u + qb];\n"
        ));
        s.push_str("            let bt = kb * 64u + qb * 4u;\n");
        s.push_str("            sb[bt] = y.x;\n            sb[bt + 1u] = y.y;\n");
        s.push_str("            sb[bt + 2u] = y.z;\n            sb[bt + 3u] = y.w;\n");
        s.push_str("        }\n        workgroupBarrier();\n");
        for ks in [0, 16] {
            for i in 0..2 {
                let (at, stride) = if self.a_col_major {
                    (format!("{ks}u * 64u + r0 + {}u", 16 * i), "s64")
                } else {
                    (format!("(r0 + {}u) * 32u + {ks}u", 16 * i), "s32")
                };
                s += &load(
                    &format!("a{ks}_{i}"),
                    'A',
                    ("sa", &at),
                    stride,
                    !self.a_col_major,
                );
            }
            for j in 0..2 {
                let at = format!("{ks}u * 64u + c0 + {}u", 16 * j);
                s += &load(&format!("b{ks}_{j}"), 'B', ("sb", &at), "s64", true);
            }
            for i in 0..2 {
                for j in 0..2 {
                    s.push_str(&format!(
                        "        c{i}_{j} = coopMultiplyAdd(a{ks}_{i}, b{ks}_{j}, c{i}_{j});\n"
                    ));
                }
            }
        }
        s.push_str("        workgroupBarrier();\n    }\n");
        s.push_str(&stores(2, 2, n, "row0 + r0", "col0 + c0"));
        s
    }

    /// The `scalar` kernel: 16 x 16 invocations a workgroup, one an output, its sum over K
    /// in order.
    fn wgsl_scalar(&self) -> String {
        let (m, n, k) = (self.m, self.n, self.k);
        let a_at = if self.a_col_major {
            format!("abase + kk * {m}u + row")
        } else {
            format!("abase + row * {k}u + kk")
        };
        let header = header(false, "f16");
        format!(
            "{header}\
             @compute @workgroup_size(16, 16)\n\
             fn main(@builtin(workgroup_id) wg: vec3<u32>, \
             @builtin(local_invocation_id) l: vec3<u32>) {{\n\
             \x20   let row = wg.y * 16u + l.y;\n\
             \x20   let col = wg.x * 16u + l.x;\n\
             \x20   let abase = wg.z * {}u;\n\
             \x20   let bbase = wg.z * {}u;\n\
             \x20   var sum = 0.0;\n\
             \x20   for (var kk = 0u; kk < {k}u; kk++) {{\n\
             \x20       sum += f32(a[{a_at}]) * f32(b[bbase + kk * {n}u + col]);\n\
             \x20   }}\n\
             \x20   c[wg.z * {}u + row * {n}u + col] = sum;\n\
             }}\n",
            m * k,
            k * n,
            m * n
        )
    }
}

/// One product's operands (seeded values in [-1, 1), as f16) on the host and the device,
/// and its output, shared by the blockings tried at that shape.
pub struct Operands {
    heads: usize,
    m: usize,
    n: usize,
    k: usize,
    a_col_major: bool,
    a: Vec<half::f16>,
    b: Vec<half::f16>,
    a_buf: wgpu::Buffer,
    b_buf: wgpu::Buffer,
    c_buf: wgpu::Buffer,
    back: wgpu::Buffer,
}

/// A blocking's figures: milliseconds a product (over `iters` in one pass), the largest
/// error of sampled outputs relative to the largest exact one, and the time to compile.
pub struct Timed {
    pub ms: f64,
    pub max_rel_err: f64,
    pub compile_ms: f64,
}

impl Operands {
    pub fn new(
        device: &wgpu::Device,
        heads: usize,
        m: usize,
        n: usize,
        k: usize,
        a_col_major: bool,
    ) -> Self {
        let mut rng = attn_saes::rng::Rng::new(7);
        let mut halves = |len: usize| -> Vec<half::f16> {
            (0..len)
                .map(|_| half::f16::from_f64(2.0 * rng.uniform() - 1.0))
                .collect()
        };
        let a = halves(heads * m * k);
        let b = halves(heads * k * n);
        let storage = |data: &[half::f16]| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE,
            })
        };
        let (a_buf, b_buf) = (storage(&a), storage(&b));
        let output = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size: (heads * m * n * 4) as u64,
                usage,
                mapped_at_creation: false,
            })
        };
        let c_buf = output(wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC);
        let back = output(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        Self {
            heads,
            m,
            n,
            k,
            a_col_major,
            a,
            b,
            a_buf,
            b_buf,
            c_buf,
            back,
        }
    }

    /// Compiles `shape`'s kernel (its sizes must be these operands'), runs it once and
    /// checks sampled outputs, then times `iters` products in one pass. A refusal (wgpu's
    /// validation, or the driver's compiler: an internal error) comes back as its message.
    pub fn run(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        shape: CoopShape,
        iters: u32,
    ) -> Result<Timed, String> {
        let dims = (shape.heads, shape.m, shape.n, shape.k, shape.a_col_major);
        assert_eq!(
            dims,
            (self.heads, self.m, self.n, self.k, self.a_col_major),
            "the kernel's shape is not the operands'"
        );
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let started = std::time::Instant::now();
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(shape.wgsl().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let refused = [internal.pop(), validation.pop()].map(pollster::block_on);
        if let Some(e) = refused.into_iter().flatten().next() {
            return Err(e.to_string());
        }
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        fn entry(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
            wgpu::BindGroupEntry {
                binding,
                resource: buffer.as_entire_binding(),
            }
        }
        let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                entry(0, &self.a_buf),
                entry(1, &self.b_buf),
                entry(2, &self.c_buf),
            ],
        });
        let (gx, gy, gz) = shape.groups();
        // `times` products in one pass, then (with `read`) C copied for reading; the wall
        // time from submission to the GPU's finish, in ms.
        let run = |times: u32, read: bool| -> f64 {
            let mut encoder = device.create_command_encoder(&Default::default());
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &bind, &[]);
                for _ in 0..times {
                    pass.dispatch_workgroups(gx, gy, gz);
                }
            }
            if read {
                encoder.copy_buffer_to_buffer(&self.c_buf, 0, &self.back, 0, self.back.size());
            }
            let started = std::time::Instant::now();
            queue.submit([encoder.finish()]);
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .expect("the GPU finishes");
            started.elapsed().as_secs_f64() * 1e3
        };
        run(1, true);
        let max_rel_err = self.max_relative_error(device);
        let ms = run(iters, false) / iters as f64;
        Ok(Timed {
            ms,
            max_rel_err,
            compile_ms,
        })
    }

    /// The largest error of 4096 sampled outputs in `back` (C, just copied) against sums
    /// in f64 of the same f16 operands, relative to the largest such sum's magnitude.
    fn max_relative_error(&self, device: &wgpu::Device) -> f64 {
        self.back
            .map_async(wgpu::MapMode::Read, .., |r| r.expect("C maps"));
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the GPU finishes");
        let c: Vec<f32> =
            bytemuck::cast_slice(&self.back.get_mapped_range(..).expect("C maps")).to_vec();
        self.back.unmap();
        let (m, n, k) = (self.m, self.n, self.k);
        let (mut worst, mut largest) = (0f64, 0f64);
        for t in 0..4096usize {
            let at = t.wrapping_mul(2_654_435_761) % (self.heads * m * n);
            let (h, i, j) = (at / (m * n), at / n % m, at % n);
            let sum: f64 = (0..k)
                .map(|kk| {
                    let ai = if self.a_col_major {
                        h * m * k + kk * m + i
                    } else {
                        h * m * k + i * k + kk
                    };
                    self.a[ai].to_f64() * self.b[h * k * n + kk * n + j].to_f64()
                })
                .sum();
            worst = worst.max((c[at] as f64 - sum).abs());
            largest = largest.max(sum.abs());
        }
        worst / largest
    }
}

/// The lines loading fragment `name` (role `A` or `B`) of f16 from `array[index]`, rows
/// `stride` apart (`row_major`) or columns: the index a `let` of its own first, as naga's
/// SPIR-V wants.
fn load(
    name: &str,
    role: char,
    (array, index): (&str, &str),
    stride: &str,
    row_major: bool,
) -> String {
    let t = if row_major { "T" } else { "" };
    format!(
        "        let i{name} = {index};\n\
         \x20       let {name} = coopLoad{t}<coop_mat16x16<f16, {role}>>(&{array}[i{name}], {stride});\n"
    )
}

/// A kernel's first lines: the extensions, and the three buffers (A and B of `operand`s,
/// C of f32).
fn header(coop: bool, operand: &str) -> String {
    let coop = if coop {
        "enable wgpu_cooperative_matrix;\n"
    } else {
        ""
    };
    format!(
        "enable f16;\n{coop}\n\
         @group(0) @binding(0) var<storage, read> a: array<{operand}>;\n\
         @group(0) @binding(1) var<storage, read> b: array<{operand}>;\n\
         @group(0) @binding(2) var<storage, read_write> c: array<f32>;\n"
    )
}

/// Stores of the `tm x tn` accumulators `c{i}_{j}` to C (row stride `sc`, `n` columns),
/// the first at (`rows`, `cols`), and the kernel's closing brace.
fn stores(tm: usize, tn: usize, n: usize, rows: &str, cols: &str) -> String {
    let mut s = String::new();
    for i in 0..tm {
        for j in 0..tn {
            s += &format!(
                "    let ic{i}_{j} = cbase + ({rows} + {}u) * {n}u + {cols} + {}u;\n",
                16 * i,
                16 * j
            );
            s += &format!("    coopStoreT(c{i}_{j}, &c[ic{i}_{j}], sc);\n");
        }
    }
    s + "}\n"
}
