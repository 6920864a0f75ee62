//! Sixteen-lane f32 vectors on the CPU's best SIMD (AVX-512, AVX2+FMA or plain
//! scalar code with the same arithmetic) and the run-time dispatch between them.

/// Width of a SIMD vector in f32 lanes.
pub const LANES: usize = 16;

/// Sixteen f32 lanes, on whichever SIMD the CPU has. All implementations perform the
/// same arithmetic (lane-wise fused multiply-add, the same reduction tree), so results
/// are bit-identical across them and independent of how products are grouped.
pub trait V16: Copy {
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn zero() -> Self;
    /// # Safety
    /// `p` must point to 16 readable f32 and the CPU must support the instruction set.
    unsafe fn load(p: *const f32) -> Self;
    /// All lanes equal to `v`.
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn splat(v: f32) -> Self;
    /// Write the 16 lanes to `p`.
    /// # Safety
    /// `p` must point to 16 writable f32 and the CPU must support the instruction set.
    unsafe fn store(self, p: *mut f32);
    /// `self + a·b`, lane-wise, fused.
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    /// Lane tree: `l += l+8`, then `l += l+4`, `l += l+2`, `l += l+1`.
    /// # Safety
    /// The CPU must support the implementation's instruction set.
    unsafe fn reduce(self) -> f32;
}

#[derive(Clone, Copy)]
pub struct Scalar([f32; LANES]);

impl V16 for Scalar {
    unsafe fn zero() -> Self {
        Scalar([0.0; LANES])
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the caller guarantees 16 readable floats.
        Scalar(unsafe { std::ptr::read_unaligned(p as *const [f32; LANES]) })
    }
    unsafe fn splat(v: f32) -> Self {
        Scalar([v; LANES])
    }
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller guarantees 16 writable floats.
        unsafe { std::ptr::write_unaligned(p as *mut [f32; LANES], self.0) }
    }
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for ((r, a), b) in r.iter_mut().zip(a.0).zip(b.0) {
            *r = a.mul_add(b, *r);
        }
        Scalar(r)
    }
    unsafe fn reduce(self) -> f32 {
        let mut a = self.0;
        let mut width = LANES / 2;
        while width > 0 {
            for l in 0..width {
                a[l] += a[l + width];
            }
            width /= 2;
        }
        a[0]
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use super::V16;
    use std::arch::x86_64::*;

    /// Reduce 8 lanes `a` (lanes 0..8 of the tree after the first step).
    #[inline(always)]
    unsafe fn reduce8(a: __m256) -> f32 {
        // SAFETY (all blocks): callers run with AVX enabled.
        unsafe {
            let q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let h = _mm_add_ps(q, _mm_movehl_ps(q, q));
            let o = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
            _mm_cvtss_f32(o)
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl V16 for Avx512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(unsafe { _mm512_setzero_ps() })
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(unsafe { _mm512_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(unsafe { _mm512_set1_ps(v) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx512(unsafe { _mm512_fmadd_ps(a.0, b.0, self.0) })
        }
        #[inline(always)]
        unsafe fn reduce(self) -> f32 {
            unsafe {
                let lo = _mm512_castps512_ps256(self.0);
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(self.0), 1));
                reduce8(_mm256_add_ps(lo, hi))
            }
        }
    }

    #[derive(Clone, Copy)]
    pub struct Avx2(__m256, __m256);

    impl V16 for Avx2 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            unsafe { Avx2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { Avx2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            unsafe { Avx2(_mm256_set1_ps(v), _mm256_set1_ps(v)) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe {
                _mm256_storeu_ps(p, self.0);
                _mm256_storeu_ps(p.add(8), self.1);
            }
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            unsafe {
                Avx2(
                    _mm256_fmadd_ps(a.0, b.0, self.0),
                    _mm256_fmadd_ps(a.1, b.1, self.1),
                )
            }
        }
        #[inline(always)]
        unsafe fn reduce(self) -> f32 {
            unsafe { reduce8(_mm256_add_ps(self.0, self.1)) }
        }
    }
}

/// Which SIMD implementation this CPU runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Simd {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The best implementation for this CPU (detected once).
pub fn simd() -> Simd {
    use std::sync::OnceLock;
    static SIMD: OnceLock<Simd> = OnceLock::new();
    *SIMD.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Simd::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Simd::Avx2;
            }
        }
        Simd::Scalar
    })
}

/// Define `unsafe fn $name(args)` that runs the generic `$imp::<V>(args)` compiled for
/// the detected instruction set (callers uphold `$imp`'s safety contract).
macro_rules! dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident => $imp:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512($($arg: $ty),*) {
                // SAFETY: forwarded; AVX-512F was detected.
                unsafe { $imp::<$crate::kernels::simd::x86::Avx512>($($arg),*) }
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($($arg: $ty),*) {
                // SAFETY: forwarded; AVX2 and FMA were detected.
                unsafe { $imp::<$crate::kernels::simd::x86::Avx2>($($arg),*) }
            }
            // SAFETY: the instruction set matches what `simd()` detected.
            unsafe {
                match $crate::kernels::simd::simd() {
                    #[cfg(target_arch = "x86_64")]
                    $crate::kernels::simd::Simd::Avx512 => avx512($($arg),*),
                    #[cfg(target_arch = "x86_64")]
                    $crate::kernels::simd::Simd::Avx2 => avx2($($arg),*),
                    $crate::kernels::simd::Simd::Scalar => {
                        $imp::<$crate::kernels::simd::Scalar>($($arg),*)
                    }
                }
            }
        }
    };
}
pub(crate) use dispatch;
