;; kernel-sgemm.wat: the in-browser engine's matmul, float32, WebAssembly SIMD, one thread,
;; and after it the loops around the products that cost most in JavaScript: the logit lens's
;; exp-sum and maxima (expsum, rowmax), Q4_1 dequantization (q4_1), weight packing (pack,
;; panels), per-row statistics (rowstats, rowsum) and the attention's mixing (mixheads).
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
;; f32x4.mul then f32x4.add, summed over p in order.
;;
;; Two builds of this one source (reproducible; the two .wasm files next to this file):
;;   kernel-sgemm.wasm      as written: mul then add, the same bits on every machine;
;;   kernel-sgemm-fma.wasm  each `c = c + x·b` of sgemm becomes relaxed SIMD's
;;                          f32x4.relaxed_madd(x, b, c): one fused multiply-add where the CPU
;;                          has FMA (1.2-1.7× the rate here, docs/performance.md), mul then add
;;                          where it has not, so its last bits may differ between machines.
;;                          kernel.js loads it where the browser validates relaxed SIMD.
;;   npx --yes -p wabt@1.0.39 wat2wasm kernel-sgemm.wat -o kernel-sgemm.wasm
;;   sed -E 's/\(f32x4\.add \(local\.get (\$c[0-9]+)\) \(f32x4\.mul (\(local\.get \$x\) \(local\.get \$b[01]\))\)\)/(f32x4.relaxed_madd \2 (local.get \1))/' \
;;     kernel-sgemm.wat > /tmp/kernel-sgemm-fma.wat
;;   npx --yes -p wabt@1.0.39 wat2wasm --enable-relaxed-simd /tmp/kernel-sgemm-fma.wat -o kernel-sgemm-fma.wasm
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
      (br $jloop))))

  ;; expsum: out[r] = Σ_{c < cols} exp(x[r, c] − m[r]) for each of `rows` rows, x row-major f32
  ;; with rows `ld` floats apart, cols a multiple of 4 (kernel.js adds the rest), m and out f64.
  ;; The log-sum-exp of the logit lens: one exp per logit, the lens's largest cost after the
  ;; products when done with Math.exp. exp is Cephes' expf, as SIMD: x = n·ln2 + t with
  ;; |t| ≤ ln2/2, exp(t) by its degree-7 polynomial (relative error ~1e-7, float32's own), times
  ;; 2^n through the exponent bits. Arguments below −87.3 (float32's smallest normal) give 0. The
  ;; four lanes are summed in float64 (two f64x2 accumulators), so the sum's rounding is
  ;; float64's, as Math.exp summed in JS. The exp is written out in the loop (not a call), four
  ;; vectors a step (16 columns, then the rest 4 at a time): one exp is a chain of ~20 dependent
  ;; operations, and four independent chains keep the FPU busy. With the constants in locals
  ;; and pmax for the clamp, this runs 2.4× the one-vector loop's rate
  ;; (docs/history/performance-2026.md, tenth session), and the sums are the same bits: the
  ;; same operations, in the same order.
  (func (export "expsum") (param $x i32) (param $rows i32) (param $cols i32) (param $ld i32) (param $m i32) (param $out i32)
    (local $r i32) (local $c i32) (local $px i32) (local $mv v128)
    (local $ex v128) (local $n v128) (local $t v128) (local $y v128) (local $tiny v128) (local $e v128) (local $acc0 v128) (local $acc1 v128)
    (local $ex2 v128) (local $n2 v128) (local $t2 v128) (local $y2 v128) (local $tiny2 v128) (local $e2 v128) (local $ex3 v128) (local $n3 v128) (local $t3 v128) (local $y3 v128) (local $tiny3 v128) (local $e3 v128) (local $ex4 v128) (local $n4 v128) (local $t4 v128) (local $y4 v128) (local $tiny4 v128) (local $e4 v128)
    (local $lo v128) (local $log2e v128) (local $half v128) (local $ln2hi v128) (local $ln2lo v128) (local $bias v128)
    (local $p0 v128) (local $p1 v128) (local $p2 v128) (local $p3 v128) (local $p4 v128) (local $p5 v128) (local $one v128)
    ;; the constants once, outside the loops: V8 builds a v128.const from immediates each time it
    ;; is met, which in the loop cost more than the exp's arithmetic
    ;; (docs/history/performance-2026.md, tenth session)
    (local.set $lo (v128.const f32x4 -87.3 -87.3 -87.3 -87.3))
    (local.set $log2e (v128.const f32x4 1.44269504088896341 1.44269504088896341 1.44269504088896341 1.44269504088896341))
    (local.set $half (v128.const f32x4 0.5 0.5 0.5 0.5))
    (local.set $ln2hi (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375))
    (local.set $ln2lo (v128.const f32x4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4))
    (local.set $bias (v128.const f32x4 8388735 8388735 8388735 8388735))    ;; 2^23 + 127
    (local.set $p0 (v128.const f32x4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4))
    (local.set $p1 (v128.const f32x4 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3))
    (local.set $p2 (v128.const f32x4 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3))
    (local.set $p3 (v128.const f32x4 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2))
    (local.set $p4 (v128.const f32x4 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1))
    (local.set $p5 (v128.const f32x4 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1))
    (local.set $one (v128.const f32x4 1 1 1 1))
    (local.set $r (i32.const 0))
    (block $rdone (loop $rloop
      (br_if $rdone (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $mv (f32x4.splat (f32.demote_f64 (f64.load (i32.add (local.get $m) (i32.shl (local.get $r) (i32.const 3)))))))
      (local.set $acc0 (v128.const i32x4 0 0 0 0))
      (local.set $acc1 (v128.const i32x4 0 0 0 0))
      (local.set $c (local.get $cols))
      (local.set $px (i32.add (local.get $x) (i32.shl (i32.mul (local.get $r) (local.get $ld)) (i32.const 2))))
      ;; per vector: ex = max(x − m, −87.3) (pmax, a < b ? b : a, is one maxps; f32x4.max's NaN
      ;; and ±0 rules cost several instructions), n = floor(ex·log2(e) + 1/2), t = ex − n·ln2 (ln2
      ;; in two parts, C1 + C2, so the product is exact), y = ((((p0·t + p1)·t + p2)·t + p3)·t +
      ;; p4)·t + p5)·t² + t + 1, times 2^n: n + 127 is an integer in [1, 127], so the float
      ;; n + 2^23 + 127 holds it in its low mantissa bits, and a left shift by 23 moves it into the
      ;; exponent field (the float's own exponent bits shift out): the bits of 2^n, with no
      ;; float-to-int convert. Lanes whose x − m was below −87.3 are then zeroed.
      (block $cdone (loop $cloop
        (br_if $cdone (i32.lt_u (local.get $c) (i32.const 16)))
        (local.set $ex (f32x4.sub (v128.load offset=0 (local.get $px)) (local.get $mv)))
        (local.set $tiny (f32x4.lt (local.get $ex) (local.get $lo)))
        (local.set $ex (f32x4.pmax (local.get $ex) (local.get $lo)))
        (local.set $n (f32x4.floor (f32x4.add (f32x4.mul (local.get $ex) (local.get $log2e)) (local.get $half))))
        (local.set $t (f32x4.sub (local.get $ex) (f32x4.mul (local.get $n) (local.get $ln2hi))))
        (local.set $t (f32x4.sub (local.get $t) (f32x4.mul (local.get $n) (local.get $ln2lo))))
        (local.set $y (f32x4.add (f32x4.mul (local.get $p0) (local.get $t)) (local.get $p1)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p2)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p3)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p4)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p5)))
        (local.set $y (f32x4.add (f32x4.add (f32x4.mul (local.get $y) (f32x4.mul (local.get $t) (local.get $t))) (local.get $t))
                                 (local.get $one)))
        (local.set $y (f32x4.mul (local.get $y) (i32x4.shl (f32x4.add (local.get $n) (local.get $bias)) (i32.const 23))))
        (local.set $e (v128.andnot (local.get $y) (local.get $tiny)))
        (local.set $ex2 (f32x4.sub (v128.load offset=16 (local.get $px)) (local.get $mv)))
        (local.set $tiny2 (f32x4.lt (local.get $ex2) (local.get $lo)))
        (local.set $ex2 (f32x4.pmax (local.get $ex2) (local.get $lo)))
        (local.set $n2 (f32x4.floor (f32x4.add (f32x4.mul (local.get $ex2) (local.get $log2e)) (local.get $half))))
        (local.set $t2 (f32x4.sub (local.get $ex2) (f32x4.mul (local.get $n2) (local.get $ln2hi))))
        (local.set $t2 (f32x4.sub (local.get $t2) (f32x4.mul (local.get $n2) (local.get $ln2lo))))
        (local.set $y2 (f32x4.add (f32x4.mul (local.get $p0) (local.get $t2)) (local.get $p1)))
        (local.set $y2 (f32x4.add (f32x4.mul (local.get $y2) (local.get $t2)) (local.get $p2)))
        (local.set $y2 (f32x4.add (f32x4.mul (local.get $y2) (local.get $t2)) (local.get $p3)))
        (local.set $y2 (f32x4.add (f32x4.mul (local.get $y2) (local.get $t2)) (local.get $p4)))
        (local.set $y2 (f32x4.add (f32x4.mul (local.get $y2) (local.get $t2)) (local.get $p5)))
        (local.set $y2 (f32x4.add (f32x4.add (f32x4.mul (local.get $y2) (f32x4.mul (local.get $t2) (local.get $t2))) (local.get $t2))
                                 (local.get $one)))
        (local.set $y2 (f32x4.mul (local.get $y2) (i32x4.shl (f32x4.add (local.get $n2) (local.get $bias)) (i32.const 23))))
        (local.set $e2 (v128.andnot (local.get $y2) (local.get $tiny2)))
        (local.set $ex3 (f32x4.sub (v128.load offset=32 (local.get $px)) (local.get $mv)))
        (local.set $tiny3 (f32x4.lt (local.get $ex3) (local.get $lo)))
        (local.set $ex3 (f32x4.pmax (local.get $ex3) (local.get $lo)))
        (local.set $n3 (f32x4.floor (f32x4.add (f32x4.mul (local.get $ex3) (local.get $log2e)) (local.get $half))))
        (local.set $t3 (f32x4.sub (local.get $ex3) (f32x4.mul (local.get $n3) (local.get $ln2hi))))
        (local.set $t3 (f32x4.sub (local.get $t3) (f32x4.mul (local.get $n3) (local.get $ln2lo))))
        (local.set $y3 (f32x4.add (f32x4.mul (local.get $p0) (local.get $t3)) (local.get $p1)))
        (local.set $y3 (f32x4.add (f32x4.mul (local.get $y3) (local.get $t3)) (local.get $p2)))
        (local.set $y3 (f32x4.add (f32x4.mul (local.get $y3) (local.get $t3)) (local.get $p3)))
        (local.set $y3 (f32x4.add (f32x4.mul (local.get $y3) (local.get $t3)) (local.get $p4)))
        (local.set $y3 (f32x4.add (f32x4.mul (local.get $y3) (local.get $t3)) (local.get $p5)))
        (local.set $y3 (f32x4.add (f32x4.add (f32x4.mul (local.get $y3) (f32x4.mul (local.get $t3) (local.get $t3))) (local.get $t3))
                                 (local.get $one)))
        (local.set $y3 (f32x4.mul (local.get $y3) (i32x4.shl (f32x4.add (local.get $n3) (local.get $bias)) (i32.const 23))))
        (local.set $e3 (v128.andnot (local.get $y3) (local.get $tiny3)))
        (local.set $ex4 (f32x4.sub (v128.load offset=48 (local.get $px)) (local.get $mv)))
        (local.set $tiny4 (f32x4.lt (local.get $ex4) (local.get $lo)))
        (local.set $ex4 (f32x4.pmax (local.get $ex4) (local.get $lo)))
        (local.set $n4 (f32x4.floor (f32x4.add (f32x4.mul (local.get $ex4) (local.get $log2e)) (local.get $half))))
        (local.set $t4 (f32x4.sub (local.get $ex4) (f32x4.mul (local.get $n4) (local.get $ln2hi))))
        (local.set $t4 (f32x4.sub (local.get $t4) (f32x4.mul (local.get $n4) (local.get $ln2lo))))
        (local.set $y4 (f32x4.add (f32x4.mul (local.get $p0) (local.get $t4)) (local.get $p1)))
        (local.set $y4 (f32x4.add (f32x4.mul (local.get $y4) (local.get $t4)) (local.get $p2)))
        (local.set $y4 (f32x4.add (f32x4.mul (local.get $y4) (local.get $t4)) (local.get $p3)))
        (local.set $y4 (f32x4.add (f32x4.mul (local.get $y4) (local.get $t4)) (local.get $p4)))
        (local.set $y4 (f32x4.add (f32x4.mul (local.get $y4) (local.get $t4)) (local.get $p5)))
        (local.set $y4 (f32x4.add (f32x4.add (f32x4.mul (local.get $y4) (f32x4.mul (local.get $t4) (local.get $t4))) (local.get $t4))
                                 (local.get $one)))
        (local.set $y4 (f32x4.mul (local.get $y4) (i32x4.shl (f32x4.add (local.get $n4) (local.get $bias)) (i32.const 23))))
        (local.set $e4 (v128.andnot (local.get $y4) (local.get $tiny4)))
        (local.set $acc0 (f64x2.add (local.get $acc0) (f64x2.promote_low_f32x4 (local.get $e))))
        (local.set $acc1 (f64x2.add (local.get $acc1) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $e) (local.get $e)))))
        (local.set $acc0 (f64x2.add (local.get $acc0) (f64x2.promote_low_f32x4 (local.get $e2))))
        (local.set $acc1 (f64x2.add (local.get $acc1) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $e2) (local.get $e2)))))
        (local.set $acc0 (f64x2.add (local.get $acc0) (f64x2.promote_low_f32x4 (local.get $e3))))
        (local.set $acc1 (f64x2.add (local.get $acc1) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $e3) (local.get $e3)))))
        (local.set $acc0 (f64x2.add (local.get $acc0) (f64x2.promote_low_f32x4 (local.get $e4))))
        (local.set $acc1 (f64x2.add (local.get $acc1) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $e4) (local.get $e4)))))
        (local.set $px (i32.add (local.get $px) (i32.const 64)))
        (local.set $c (i32.sub (local.get $c) (i32.const 16)))
        (br $cloop)))
      (block $tdone (loop $tloop
        (br_if $tdone (i32.eqz (local.get $c)))
        (local.set $ex (f32x4.sub (v128.load offset=0 (local.get $px)) (local.get $mv)))
        (local.set $tiny (f32x4.lt (local.get $ex) (local.get $lo)))
        (local.set $ex (f32x4.pmax (local.get $ex) (local.get $lo)))
        (local.set $n (f32x4.floor (f32x4.add (f32x4.mul (local.get $ex) (local.get $log2e)) (local.get $half))))
        (local.set $t (f32x4.sub (local.get $ex) (f32x4.mul (local.get $n) (local.get $ln2hi))))
        (local.set $t (f32x4.sub (local.get $t) (f32x4.mul (local.get $n) (local.get $ln2lo))))
        (local.set $y (f32x4.add (f32x4.mul (local.get $p0) (local.get $t)) (local.get $p1)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p2)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p3)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p4)))
        (local.set $y (f32x4.add (f32x4.mul (local.get $y) (local.get $t)) (local.get $p5)))
        (local.set $y (f32x4.add (f32x4.add (f32x4.mul (local.get $y) (f32x4.mul (local.get $t) (local.get $t))) (local.get $t))
                                 (local.get $one)))
        (local.set $y (f32x4.mul (local.get $y) (i32x4.shl (f32x4.add (local.get $n) (local.get $bias)) (i32.const 23))))
        (local.set $e (v128.andnot (local.get $y) (local.get $tiny)))
        (local.set $acc0 (f64x2.add (local.get $acc0) (f64x2.promote_low_f32x4 (local.get $e))))
        (local.set $acc1 (f64x2.add (local.get $acc1) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $e) (local.get $e)))))
        (local.set $px (i32.add (local.get $px) (i32.const 16)))
        (local.set $c (i32.sub (local.get $c) (i32.const 4)))
        (br $tloop)))
      (local.set $acc0 (f64x2.add (local.get $acc0) (local.get $acc1)))
      (f64.store (i32.add (local.get $out) (i32.shl (local.get $r) (i32.const 3)))
                 (f64.add (f64x2.extract_lane 0 (local.get $acc0)) (f64x2.extract_lane 1 (local.get $acc0))))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rloop))))

  ;; rowmax: out[r] = max_{c < cols} x[r, c] (f64), rows `ld` floats apart, cols a multiple of 4.
  ;; Lets the lens skip its top-k scan of a block whose largest logit cannot enter the top k.
  ;; pmax (one maxps) in the loop: the same maximum as f32x4.max for logits, which are never
  ;; NaN unless the sums after them are too; f32x4.max cost ~2.5 % of a lens helper's time.
  (func (export "rowmax") (param $x i32) (param $rows i32) (param $cols i32) (param $ld i32) (param $out i32)
    (local $r i32) (local $c i32) (local $px i32) (local $mx v128)
    (local.set $r (i32.const 0))
    (block $rdone (loop $rloop
      (br_if $rdone (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $mx (v128.const f32x4 -inf -inf -inf -inf))
      (local.set $c (local.get $cols))
      (local.set $px (i32.add (local.get $x) (i32.shl (i32.mul (local.get $r) (local.get $ld)) (i32.const 2))))
      (block $cdone (loop $cloop
        (br_if $cdone (i32.eqz (local.get $c)))
        (local.set $mx (f32x4.pmax (local.get $mx) (v128.load (local.get $px))))
        (local.set $px (i32.add (local.get $px) (i32.const 16)))
        (local.set $c (i32.sub (local.get $c) (i32.const 4)))
        (br $cloop)))
      (local.set $mx (f32x4.max (local.get $mx) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $mx) (local.get $mx))))
      (local.set $mx (f32x4.max (local.get $mx) (i8x16.shuffle 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 (local.get $mx) (local.get $mx))))
      (f64.store (i32.add (local.get $out) (i32.shl (local.get $r) (i32.const 3)))
                 (f64.promote_f32 (f32x4.extract_lane 0 (local.get $mx))))
      (local.set $r (i32.add (local.get $r) (i32.const 1)))
      (br $rloop))))

  ;; q4_1: dequantize `blocks` GGUF Q4_1 blocks at byte offset src (20 bytes each: float16 d,
  ;; float16 m, 16 bytes of 4-bit q; value j < 16 is the low nibble of byte j, value 16 + j its
  ;; high nibble) into 32·blocks float32 at dst: x = d·q + m. d·q is exact in float32 (11-bit
  ;; times 4-bit mantissas), so the one rounding is the add's: gguf-py's numpy float32 result,
  ;; bit for bit, as dequant.js computes it (tested against it).
  (func $f16 (param $h i32) (result f32)
    (local $e i32)
    (local.set $e (i32.and (local.get $h) (i32.const 0x7c00)))
    (if (result f32) (i32.eqz (local.get $e))
      (then (f32.copysign                                  ;; zero, subnormal: m·2⁻²⁴
              (f32.mul (f32.convert_i32_u (i32.and (local.get $h) (i32.const 0x3ff))) (f32.const 5.9604644775390625e-8))
              (f32.reinterpret_i32 (i32.shl (local.get $h) (i32.const 16)))))
      (else (f32.reinterpret_i32 (i32.or
              (i32.shl (i32.and (local.get $h) (i32.const 0x8000)) (i32.const 16))
              (if (result i32) (i32.eq (local.get $e) (i32.const 0x7c00))
                (then (i32.or (i32.const 0x7f800000) (i32.shl (i32.and (local.get $h) (i32.const 0x3ff)) (i32.const 13))))
                (else (i32.shl (i32.add (i32.and (local.get $h) (i32.const 0x7fff)) (i32.const 0x1c000)) (i32.const 13)))))))))

  (func (export "q4_1") (param $src i32) (param $blocks i32) (param $dst i32)
    (local $d v128) (local $m v128) (local $q v128) (local $n v128) (local $w v128)
    (block $done (loop $next
      (br_if $done (i32.eqz (local.get $blocks)))
      (local.set $d (f32x4.splat (call $f16 (i32.load16_u (local.get $src)))))
      (local.set $m (f32x4.splat (call $f16 (i32.load16_u offset=2 (local.get $src)))))
      (local.set $q (v128.load offset=4 (local.get $src)))
      ;; low nibbles: values 0..15
      (local.set $n (v128.and (local.get $q) (v128.const i8x16 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15 15)))
      (local.set $w (i16x8.extend_low_i8x16_u (local.get $n)))
      (v128.store offset=0 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_low_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (v128.store offset=16 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_high_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (local.set $w (i16x8.extend_high_i8x16_u (local.get $n)))
      (v128.store offset=32 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_low_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (v128.store offset=48 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_high_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      ;; high nibbles: values 16..31
      (local.set $n (i8x16.shr_u (local.get $q) (i32.const 4)))
      (local.set $w (i16x8.extend_low_i8x16_u (local.get $n)))
      (v128.store offset=64 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_low_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (v128.store offset=80 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_high_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (local.set $w (i16x8.extend_high_i8x16_u (local.get $n)))
      (v128.store offset=96 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_low_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (v128.store offset=112 (local.get $dst) (f32x4.add (f32x4.mul (f32x4.convert_i32x4_u (i32x4.extend_high_i16x8_u (local.get $w))) (local.get $d)) (local.get $m)))
      (local.set $src (i32.add (local.get $src) (i32.const 20)))
      (local.set $dst (i32.add (local.get $dst) (i32.const 128)))
      (local.set $blocks (i32.sub (local.get $blocks) (i32.const 1)))
      (br $next))))

  ;; pack: W [rows, cols] row-major f32 at src (rows a multiple of 8: kernel.js zero-pads) into
  ;; sgemm's B layout at dst: Wᵀ in 8-column panels, B[c, r] at (r / 8)·cols·8 + c·8 + r % 8,
  ;; each value times scale[c] (f32 at byte offset scale; 0: no scale). Four columns at a time:
  ;; one v128 from each of the 8 rows, two 4 × 4 transposes, 8 stores of 16 contiguous bytes.
  (func (export "pack") (param $src i32) (param $rows i32) (param $cols i32) (param $dst i32) (param $scale i32)
    (local $r i32) (local $c i32) (local $c4 i32) (local $ld i32) (local $p i32) (local $q i32) (local $s v128)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128)
    (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128) (local $sc f32) (local $k i32)
    (local.set $ld (i32.shl (local.get $cols) (i32.const 2)))                 ;; row stride, bytes
    (local.set $c4 (i32.and (local.get $cols) (i32.const -4)))
    (local.set $r (i32.const 0))
    (block $rdone (loop $rloop
      (br_if $rdone (i32.ge_u (local.get $r) (local.get $rows)))
      (local.set $p (i32.add (local.get $src) (i32.mul (local.get $r) (local.get $ld))))   ;; row r, column 0
      (local.set $q (i32.add (local.get $dst) (i32.mul (local.get $r) (local.get $ld))))   ;; panel r/8 (= r·cols·4 bytes)
      (local.set $c (i32.const 0))
      (block $cdone (loop $cloop
        (br_if $cdone (i32.ge_u (local.get $c) (local.get $c4)))
        (local.set $s (if (result v128) (local.get $scale)
          (then (v128.load (i32.add (local.get $scale) (i32.shl (local.get $c) (i32.const 2)))))
          (else (v128.const f32x4 1 1 1 1))))
        ;; rows r..r+3 -> a, rows r+4..r+7 -> b, four columns each, scaled
        (local.set $a0 (f32x4.mul (v128.load (local.get $p)) (local.get $s)))
        (local.set $a1 (f32x4.mul (v128.load (i32.add (local.get $p) (local.get $ld))) (local.get $s)))
        (local.set $a2 (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $ld) (i32.const 2)))) (local.get $s)))
        (local.set $a3 (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $ld) (i32.const 3)))) (local.get $s)))
        (local.set $b0 (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $ld) (i32.const 4)))) (local.get $s)))
        (local.set $b1 (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $ld) (i32.const 5)))) (local.get $s)))
        (local.set $b2 (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $ld) (i32.const 6)))) (local.get $s)))
        (local.set $b3 (f32x4.mul (v128.load (i32.add (local.get $p) (i32.mul (local.get $ld) (i32.const 7)))) (local.get $s)))
        ;; transpose a: t0 = a0[0] a1[0] a0[1] a1[1], t1 = a0[2] a1[2] a0[3] a1[3], t2/t3 the same for a2, a3
        (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a0) (local.get $a1)))
        (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a0) (local.get $a1)))
        (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $a2) (local.get $a3)))
        (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $a2) (local.get $a3)))
        (local.set $a0 (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))   ;; column c
        (local.set $a1 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2))) ;; c + 1
        (local.set $a2 (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))   ;; c + 2
        (local.set $a3 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3))) ;; c + 3
        (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $b0) (local.get $b1)))
        (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $b0) (local.get $b1)))
        (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23 (local.get $b2) (local.get $b3)))
        (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31 (local.get $b2) (local.get $b3)))
        (local.set $b0 (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))
        (local.set $b1 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2)))
        (local.set $b2 (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))
        (local.set $b3 (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3)))
        ;; panel rows c..c+3: 8 floats each (rows r..r+3, then r+4..r+7), 128 contiguous bytes
        (v128.store offset=0 (local.get $q) (local.get $a0))
        (v128.store offset=16 (local.get $q) (local.get $b0))
        (v128.store offset=32 (local.get $q) (local.get $a1))
        (v128.store offset=48 (local.get $q) (local.get $b1))
        (v128.store offset=64 (local.get $q) (local.get $a2))
        (v128.store offset=80 (local.get $q) (local.get $b2))
        (v128.store offset=96 (local.get $q) (local.get $a3))
        (v128.store offset=112 (local.get $q) (local.get $b3))
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (local.set $q (i32.add (local.get $q) (i32.const 128)))
        (local.set $c (i32.add (local.get $c) (i32.const 4)))
        (br $cloop)))
      ;; the last cols % 4 columns, one value at a time
      (block $tdone (loop $tloop
        (br_if $tdone (i32.ge_u (local.get $c) (local.get $cols)))
        (local.set $sc (if (result f32) (local.get $scale)
          (then (f32.load (i32.add (local.get $scale) (i32.shl (local.get $c) (i32.const 2)))))
          (else (f32.const 1))))
        (local.set $k (i32.const 0))
        (block $kdone (loop $kloop
          (br_if $kdone (i32.ge_u (local.get $k) (i32.const 8)))
          (f32.store (i32.add (local.get $q) (i32.shl (local.get $k) (i32.const 2)))
                     (f32.mul (f32.load (i32.add (local.get $p) (i32.mul (local.get $k) (local.get $ld)))) (local.get $sc)))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br $kloop)))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (local.set $q (i32.add (local.get $q) (i32.const 32)))
        (local.set $c (i32.add (local.get $c) (i32.const 1)))
        (br $tloop)))
      (local.set $r (i32.add (local.get $r) (i32.const 8)))
      (br $rloop))))

  ;; rowstats: the engine's per-row statistics (engine-stats.js, engine-heads.js), in float64 as
  ;; the JavaScript loops they replace: for each of n rows i, with a, b (n, d) f32 row-major and
  ;; row ri[i] (i32) of r, whose rows are ldr floats apart,
  ;;   out[3i] = Σ_j a[i, j]²,  out[3i + 1] = Σ_j b[i, j]²,  out[3i + 2] = Σ_j a[i, j]·r[ri[i], j]
  ;; (f64). Each float32 is promoted exactly and each product of two is exact in float64; the
  ;; sums run in four lanes (j mod 4), then add up, so their last bits may differ from one
  ;; sequential sum (~1e-16 relative). d % 4 columns at the end, one at a time.
  (func (export "rowstats") (param $a i32) (param $b i32) (param $r i32) (param $ri i32) (param $n i32) (param $d i32) (param $ldr i32) (param $out i32)
    (local $i i32) (local $j i32) (local $d4 i32) (local $pa i32) (local $pb i32) (local $pr i32)
    (local $va v128) (local $vb v128) (local $vr v128) (local $lo v128) (local $hi v128)
    (local $aa0 v128) (local $aa1 v128) (local $bb0 v128) (local $bb1 v128) (local $ar0 v128) (local $ar1 v128)
    (local $x f64) (local $y f64) (local $z f64) (local $q f64)
    (local.set $d4 (i32.and (local.get $d) (i32.const -4)))
    (local.set $i (i32.const 0))
    (block $idone (loop $iloop
      (br_if $idone (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $pa (i32.add (local.get $a) (i32.shl (i32.mul (local.get $i) (local.get $d)) (i32.const 2))))
      (local.set $pb (i32.add (local.get $b) (i32.shl (i32.mul (local.get $i) (local.get $d)) (i32.const 2))))
      (local.set $pr (i32.add (local.get $r) (i32.shl (i32.mul (i32.load (i32.add (local.get $ri) (i32.shl (local.get $i) (i32.const 2))))
                                                                  (local.get $ldr)) (i32.const 2))))
      (local.set $aa0 (v128.const i32x4 0 0 0 0)) (local.set $aa1 (v128.const i32x4 0 0 0 0))
      (local.set $bb0 (v128.const i32x4 0 0 0 0)) (local.set $bb1 (v128.const i32x4 0 0 0 0))
      (local.set $ar0 (v128.const i32x4 0 0 0 0)) (local.set $ar1 (v128.const i32x4 0 0 0 0))
      (local.set $j (i32.const 0))
      (block $jdone (loop $jloop
        (br_if $jdone (i32.ge_u (local.get $j) (local.get $d4)))
        (local.set $va (v128.load (local.get $pa)))
        (local.set $vb (v128.load (local.get $pb)))
        (local.set $vr (v128.load (local.get $pr)))
        ;; a: lanes 0, 1 into aa0/ar0, lanes 2, 3 into aa1/ar1
        (local.set $lo (f64x2.promote_low_f32x4 (local.get $va)))
        (local.set $hi (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $va) (local.get $va))))
        (local.set $aa0 (f64x2.add (local.get $aa0) (f64x2.mul (local.get $lo) (local.get $lo))))
        (local.set $aa1 (f64x2.add (local.get $aa1) (f64x2.mul (local.get $hi) (local.get $hi))))
        (local.set $ar0 (f64x2.add (local.get $ar0) (f64x2.mul (local.get $lo) (f64x2.promote_low_f32x4 (local.get $vr)))))
        (local.set $ar1 (f64x2.add (local.get $ar1) (f64x2.mul (local.get $hi) (f64x2.promote_low_f32x4
          (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $vr) (local.get $vr))))))
        (local.set $lo (f64x2.promote_low_f32x4 (local.get $vb)))
        (local.set $hi (f64x2.promote_low_f32x4 (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $vb) (local.get $vb))))
        (local.set $bb0 (f64x2.add (local.get $bb0) (f64x2.mul (local.get $lo) (local.get $lo))))
        (local.set $bb1 (f64x2.add (local.get $bb1) (f64x2.mul (local.get $hi) (local.get $hi))))
        (local.set $pa (i32.add (local.get $pa) (i32.const 16)))
        (local.set $pb (i32.add (local.get $pb) (i32.const 16)))
        (local.set $pr (i32.add (local.get $pr) (i32.const 16)))
        (local.set $j (i32.add (local.get $j) (i32.const 4)))
        (br $jloop)))
      (local.set $aa0 (f64x2.add (local.get $aa0) (local.get $aa1)))
      (local.set $bb0 (f64x2.add (local.get $bb0) (local.get $bb1)))
      (local.set $ar0 (f64x2.add (local.get $ar0) (local.get $ar1)))
      (local.set $x (f64.add (f64x2.extract_lane 0 (local.get $aa0)) (f64x2.extract_lane 1 (local.get $aa0))))
      (local.set $y (f64.add (f64x2.extract_lane 0 (local.get $bb0)) (f64x2.extract_lane 1 (local.get $bb0))))
      (local.set $z (f64.add (f64x2.extract_lane 0 (local.get $ar0)) (f64x2.extract_lane 1 (local.get $ar0))))
      (block $tdone (loop $tloop                              ;; the last d % 4 columns
        (br_if $tdone (i32.ge_u (local.get $j) (local.get $d)))
        (local.set $q (f64.promote_f32 (f32.load (local.get $pa))))
        (local.set $x (f64.add (local.get $x) (f64.mul (local.get $q) (local.get $q))))
        (local.set $z (f64.add (local.get $z) (f64.mul (local.get $q) (f64.promote_f32 (f32.load (local.get $pr))))))
        (local.set $q (f64.promote_f32 (f32.load (local.get $pb))))
        (local.set $y (f64.add (local.get $y) (f64.mul (local.get $q) (local.get $q))))
        (local.set $pa (i32.add (local.get $pa) (i32.const 4)))
        (local.set $pb (i32.add (local.get $pb) (i32.const 4)))
        (local.set $pr (i32.add (local.get $pr) (i32.const 4)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $tloop)))
      (f64.store offset=0 (i32.add (local.get $out) (i32.mul (local.get $i) (i32.const 24))) (local.get $x))
      (f64.store offset=8 (i32.add (local.get $out) (i32.mul (local.get $i) (i32.const 24))) (local.get $y))
      (f64.store offset=16 (i32.add (local.get $out) (i32.mul (local.get $i) (i32.const 24))) (local.get $z))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $iloop))))

  ;; rowsum: out[ri[i]] += x[i] for each of n rows (d floats each), in row order: f32 rows into
  ;; f32 (wide 0) or promoted into f64 (wide 1) rows of out. Each element is one float add per
  ;; row, in the same order as the JavaScript loops it replaces, so the same bits.
  (func (export "rowsum") (param $x i32) (param $ri i32) (param $n i32) (param $d i32) (param $out i32) (param $wide i32)
    (local $i i32) (local $j i32) (local $px i32) (local $po i32) (local $v v128)
    (local.set $i (i32.const 0))
    (block $idone (loop $iloop
      (br_if $idone (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $px (i32.add (local.get $x) (i32.shl (i32.mul (local.get $i) (local.get $d)) (i32.const 2))))
      (local.set $po (i32.load (i32.add (local.get $ri) (i32.shl (local.get $i) (i32.const 2)))))
      (local.set $j (i32.const 0))
      (if (local.get $wide)
        (then
          (local.set $po (i32.add (local.get $out) (i32.shl (i32.mul (local.get $po) (local.get $d)) (i32.const 3))))
          (block $jdone (loop $jloop
            (br_if $jdone (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $d)))
            (local.set $v (v128.load (local.get $px)))
            (v128.store offset=0 (local.get $po) (f64x2.add (v128.load offset=0 (local.get $po)) (f64x2.promote_low_f32x4 (local.get $v))))
            (v128.store offset=16 (local.get $po) (f64x2.add (v128.load offset=16 (local.get $po)) (f64x2.promote_low_f32x4
              (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $v) (local.get $v)))))
            (local.set $px (i32.add (local.get $px) (i32.const 16)))
            (local.set $po (i32.add (local.get $po) (i32.const 32)))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $jloop)))
          (block $tdone (loop $tloop
            (br_if $tdone (i32.ge_u (local.get $j) (local.get $d)))
            (f64.store (local.get $po) (f64.add (f64.load (local.get $po)) (f64.promote_f32 (f32.load (local.get $px)))))
            (local.set $px (i32.add (local.get $px) (i32.const 4)))
            (local.set $po (i32.add (local.get $po) (i32.const 8)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $tloop))))
        (else
          (local.set $po (i32.add (local.get $out) (i32.shl (i32.mul (local.get $po) (local.get $d)) (i32.const 2))))
          (block $jdone (loop $jloop
            (br_if $jdone (i32.gt_u (i32.add (local.get $j) (i32.const 4)) (local.get $d)))
            (v128.store (local.get $po) (f32x4.add (v128.load (local.get $po)) (v128.load (local.get $px))))
            (local.set $px (i32.add (local.get $px) (i32.const 16)))
            (local.set $po (i32.add (local.get $po) (i32.const 16)))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $jloop)))
          (block $tdone (loop $tloop
            (br_if $tdone (i32.ge_u (local.get $j) (local.get $d)))
            (f32.store (local.get $po) (f32.add (f32.load (local.get $po)) (f32.load (local.get $px))))
            (local.set $px (i32.add (local.get $px) (i32.const 4)))
            (local.set $po (i32.add (local.get $po) (i32.const 4)))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $tloop)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $iloop))))

  ;; panels: B (k, n) row-major f32 at src, already [in, out] (a transposed weight), into sgemm's
  ;; B layout at dst: panel j (columns 8j .. 8j + 7) is k × 8 contiguous floats, B[p, 8j + t] at
  ;; float (j·k + p)·8 + t. n a multiple of 8 (kernel.js pads). Two 16-byte copies per row of a
  ;; panel: the JavaScript loop it replaces copied one float at a time (~2 ms per 576 × 576).
  (func (export "panels") (param $src i32) (param $k i32) (param $n i32) (param $dst i32)
    (local $j i32) (local $p i32) (local $ps i32) (local $ld i32)
    (local.set $ld (i32.shl (local.get $n) (i32.const 2)))
    (local.set $j (i32.const 0))
    (block $jdone (loop $jloop
      (br_if $jdone (i32.ge_u (local.get $j) (local.get $n)))
      (local.set $ps (i32.add (local.get $src) (i32.shl (local.get $j) (i32.const 2))))
      (local.set $p (local.get $k))
      (block $pdone (loop $ploop
        (br_if $pdone (i32.eqz (local.get $p)))
        (v128.store offset=0 (local.get $dst) (v128.load offset=0 (local.get $ps)))
        (v128.store offset=16 (local.get $dst) (v128.load offset=16 (local.get $ps)))
        (local.set $ps (i32.add (local.get $ps) (local.get $ld)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 32)))
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (br $ploop)))
      (local.set $j (i32.add (local.get $j) (i32.const 8)))
      (br $jloop))))

  ;; mixheads: the attention's mixing of the values for every row of the packed causal triangle
  ;; (engine.js decomposeAttention), per source s (rows offset[s] .. , positions start[s] .. P-1),
  ;; position p and query head h of group g = h / rep:
  ;;   O[row(p, s), h·hd + j] = Σ_{t = start[s]}^{p} pattern[h, p, t] · V[row(t, s), g·hd + j]
  ;; row(p, s) = offset[s] + p − start[s]; V (T, KV·hd), O (T, H·hd), pattern (H, P, P) f32,
  ;; start, offset i32; hd a multiple of 4. Summed over t in order, in float32 (mul, then add).
  (func (export "mixheads") (param $v i32) (param $pat i32) (param $start i32) (param $offset i32) (param $S i32)
                            (param $P i32) (param $H i32) (param $rep i32) (param $hd i32) (param $o i32)
    (local $s i32) (local $s0 i32) (local $off i32) (local $p i32) (local $h i32) (local $j i32) (local $t i32)
    (local $dkv i32) (local $dh i32) (local $prow i32) (local $orow i32) (local $vcol i32) (local $acc v128)
    (local.set $dkv (i32.mul (i32.div_u (local.get $H) (local.get $rep)) (local.get $hd)))
    (local.set $dh (i32.mul (local.get $H) (local.get $hd)))
    (local.set $s (i32.const 0))
    (block $sdone (loop $sloop
      (br_if $sdone (i32.ge_u (local.get $s) (local.get $S)))
      (local.set $s0 (i32.load (i32.add (local.get $start) (i32.shl (local.get $s) (i32.const 2)))))
      (local.set $off (i32.sub (i32.load (i32.add (local.get $offset) (i32.shl (local.get $s) (i32.const 2)))) (local.get $s0)))
      (local.set $p (local.get $s0))
      (block $pdone (loop $ploop
        (br_if $pdone (i32.ge_u (local.get $p) (local.get $P)))
        (local.set $h (i32.const 0))
        (block $hdone (loop $hloop
          (br_if $hdone (i32.ge_u (local.get $h) (local.get $H)))
          ;; pattern[h, p, :] and O[row(p, s), h·hd:]
          (local.set $prow (i32.add (local.get $pat) (i32.shl (i32.mul (i32.add (i32.mul (local.get $h) (local.get $P)) (local.get $p)) (local.get $P)) (i32.const 2))))
          (local.set $orow (i32.add (local.get $o) (i32.shl (i32.add (i32.mul (i32.add (local.get $off) (local.get $p)) (local.get $dh))
                                                                     (i32.mul (local.get $h) (local.get $hd))) (i32.const 2))))
          (local.set $j (i32.const 0))
          (block $jdone (loop $jloop
            (br_if $jdone (i32.ge_u (local.get $j) (local.get $hd)))
            ;; V[row(t, s), g·hd + j], t = start[s] first
            (local.set $vcol (i32.add (local.get $v) (i32.shl (i32.add (i32.mul (i32.add (local.get $off) (local.get $s0)) (local.get $dkv))
                                                                       (i32.add (i32.mul (i32.div_u (local.get $h) (local.get $rep)) (local.get $hd)) (local.get $j)))
                                                              (i32.const 2))))
            (local.set $acc (v128.const i32x4 0 0 0 0))
            (local.set $t (local.get $s0))
            (block $tdone (loop $tloop
              (br_if $tdone (i32.gt_u (local.get $t) (local.get $p)))
              (local.set $acc (f32x4.add (local.get $acc)
                (f32x4.mul (v128.load32_splat (i32.add (local.get $prow) (i32.shl (local.get $t) (i32.const 2))))
                           (v128.load (local.get $vcol)))))
              (local.set $vcol (i32.add (local.get $vcol) (i32.shl (local.get $dkv) (i32.const 2))))
              (local.set $t (i32.add (local.get $t) (i32.const 1)))
              (br $tloop)))
            (v128.store (i32.add (local.get $orow) (i32.shl (local.get $j) (i32.const 2))) (local.get $acc))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $jloop)))
          (local.set $h (i32.add (local.get $h) (i32.const 1)))
          (br $hloop)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $ploop)))
      (local.set $s (i32.add (local.get $s) (i32.const 1)))
      (br $sloop))))
)
