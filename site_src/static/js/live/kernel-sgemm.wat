;; kernel-sgemm.wat: the in-browser engine's matmul, float32, WebAssembly SIMD, one thread.
;;
;;   C[m, n] = A[m, k] · B[k, n]    A and C row-major, at byte offsets a, c of the exported
;;   memory; B packed in 8-column panels at byte offset b: B[p, j] is at float
;;   (j / 8)·k·8 + p·8 + j % 8, so panel j/8 is k × 8 contiguous floats
;;   m a multiple of 4, n a multiple of 8, k >= 1 (kernel.js pads, packs and chunks to fit)
;;
;; Loop order: an 8-column panel of B (k × 8 floats, contiguous) stays in L1 while each 4-row
;; strip of A passes over it; the 4 × 8 block of C lives in 8 f32x4 accumulators. The panels
;; are packed because a plain row-major B puts a panel's k rows n·4 bytes apart: at n = 4096
;; (16 KB) every row falls in the same L1 set and the panel does not stay in cache at all. Products are
;; f32x4.mul then f32x4.add (no fused multiply-add), summed over p in order, so the result
;; does not depend on the machine.
;;
;; Build (reproducible; the .wasm next to this file is its output):
;;   npx --yes -p wabt@1.0.39 wat2wasm kernel-sgemm.wat -o kernel-sgemm.wasm
;; Written out from a 4 × 8 block template; the unrolled body below is the source.
(module
  (memory (export "memory") 1)
  (func (export "sgemm") (param $a i32) (param $b i32) (param $c i32) (param $m i32) (param $k i32) (param $n i32)
    (local $j i32) (local $i i32) (local $p i32) (local $pb i32) (local $lda i32) (local $ldb i32) (local $pc i32)
    (local $pa0 i32) (local $pa1 i32) (local $pa2 i32) (local $pa3 i32)
    (local $c00 v128) (local $c01 v128) (local $c10 v128) (local $c11 v128) (local $c20 v128) (local $c21 v128) (local $c30 v128) (local $c31 v128)
    (local $b0 v128) (local $b1 v128) (local $x v128)
    (local.set $lda (i32.shl (local.get $k) (i32.const 2)))
    (local.set $ldb (i32.shl (local.get $n) (i32.const 2)))
    (local.set $j (i32.const 0))
    (block $jdone (loop $jloop
      (br_if $jdone (i32.ge_u (local.get $j) (local.get $n)))
      (local.set $i (i32.const 0))
      (block $idone (loop $iloop
        (br_if $idone (i32.ge_u (local.get $i) (local.get $m)))
        (local.set $c00 (v128.const i32x4 0 0 0 0))
        (local.set $c01 (v128.const i32x4 0 0 0 0))
        (local.set $c10 (v128.const i32x4 0 0 0 0))
        (local.set $c11 (v128.const i32x4 0 0 0 0))
        (local.set $c20 (v128.const i32x4 0 0 0 0))
        (local.set $c21 (v128.const i32x4 0 0 0 0))
        (local.set $c30 (v128.const i32x4 0 0 0 0))
        (local.set $c31 (v128.const i32x4 0 0 0 0))
        (local.set $pa0 (i32.add (local.get $a) (i32.mul (local.get $i) (local.get $lda))))
        (local.set $pa1 (i32.add (local.get $pa0) (local.get $lda)))
        (local.set $pa2 (i32.add (local.get $pa1) (local.get $lda)))
        (local.set $pa3 (i32.add (local.get $pa2) (local.get $lda)))
        (local.set $pb (i32.add (local.get $b) (i32.mul (local.get $j) (local.get $lda))))
        (local.set $p (local.get $k))
        (loop $ploop
          (local.set $b0 (v128.load offset=0 (local.get $pb)))
          (local.set $b1 (v128.load offset=16 (local.get $pb)))
          (local.set $x (v128.load32_splat (local.get $pa0)))
          (local.set $c00 (f32x4.add (local.get $c00) (f32x4.mul (local.get $x) (local.get $b0))))
          (local.set $c01 (f32x4.add (local.get $c01) (f32x4.mul (local.get $x) (local.get $b1))))
          (local.set $pa0 (i32.add (local.get $pa0) (i32.const 4)))
          (local.set $x (v128.load32_splat (local.get $pa1)))
          (local.set $c10 (f32x4.add (local.get $c10) (f32x4.mul (local.get $x) (local.get $b0))))
          (local.set $c11 (f32x4.add (local.get $c11) (f32x4.mul (local.get $x) (local.get $b1))))
          (local.set $pa1 (i32.add (local.get $pa1) (i32.const 4)))
          (local.set $x (v128.load32_splat (local.get $pa2)))
          (local.set $c20 (f32x4.add (local.get $c20) (f32x4.mul (local.get $x) (local.get $b0))))
          (local.set $c21 (f32x4.add (local.get $c21) (f32x4.mul (local.get $x) (local.get $b1))))
          (local.set $pa2 (i32.add (local.get $pa2) (i32.const 4)))
          (local.set $x (v128.load32_splat (local.get $pa3)))
          (local.set $c30 (f32x4.add (local.get $c30) (f32x4.mul (local.get $x) (local.get $b0))))
          (local.set $c31 (f32x4.add (local.get $c31) (f32x4.mul (local.get $x) (local.get $b1))))
          (local.set $pa3 (i32.add (local.get $pa3) (i32.const 4)))
          (local.set $pb (i32.add (local.get $pb) (i32.const 32)))
          (local.set $p (i32.sub (local.get $p) (i32.const 1)))
          (br_if $ploop (local.get $p)))
        (local.set $pc (i32.add (local.get $c) (i32.add (i32.mul (local.get $i) (local.get $ldb)) (i32.shl (local.get $j) (i32.const 2)))))
        (v128.store offset=0 (local.get $pc) (local.get $c00))
        (v128.store offset=16 (local.get $pc) (local.get $c01))
        (local.set $pc (i32.add (local.get $pc) (local.get $ldb)))
        (v128.store offset=0 (local.get $pc) (local.get $c10))
        (v128.store offset=16 (local.get $pc) (local.get $c11))
        (local.set $pc (i32.add (local.get $pc) (local.get $ldb)))
        (v128.store offset=0 (local.get $pc) (local.get $c20))
        (v128.store offset=16 (local.get $pc) (local.get $c21))
        (local.set $pc (i32.add (local.get $pc) (local.get $ldb)))
        (v128.store offset=0 (local.get $pc) (local.get $c30))
        (v128.store offset=16 (local.get $pc) (local.get $c31))
        (local.set $pc (i32.add (local.get $pc) (local.get $ldb)))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $iloop)))
      (local.set $j (i32.add (local.get $j) (i32.const 8)))
      (br $jloop)))))
