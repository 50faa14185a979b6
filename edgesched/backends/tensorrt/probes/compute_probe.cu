// Compute-bound probe: FMA chains in registers, no memory traffic while it runs.
//
// Each thread runs `iterations` rounds of 16 steps over 8 independent FMA chains (ILP 8, so
// one block of 256 threads keeps an SM's FP32 pipes busy without relying on occupancy):
// 256 FLOP per thread per round. When spin_cycles > 0 a block keeps issuing rounds until its
// SM clock has advanced spin_cycles (clock64(), SM cycles), so a load of known footprint can
// hold its SMs for a known time whatever else runs. The footprint is the grid: blocks resident
// at once = min(grid, SMs x blocks per SM from the occupancy calculator).
// Fixed work per block (not grid-stride): a block's duration does not depend on the grid,
// so the solo time stays flat up to one full wave and the co-run slowdown reads directly.

#define FMA8(m, c)                                                                    \
    a0 = fmaf(a0, m, c); a1 = fmaf(a1, m, c); a2 = fmaf(a2, m, c); a3 = fmaf(a3, m, c); \
    a4 = fmaf(a4, m, c); a5 = fmaf(a5, m, c); a6 = fmaf(a6, m, c); a7 = fmaf(a7, m, c);

extern "C" __global__ void compute_probe(float* out, int iterations, long long spin_cycles)
{
    // Chains converge to c / (1 - m) = 1.0 from above: finite, never NaN, never -1.
    const float m = 0.9999f, c = 0.0001f;
    const float seed = 1.0f + 1e-3f * threadIdx.x;
    float a0 = seed, a1 = seed + 1.0f, a2 = seed + 2.0f, a3 = seed + 3.0f;
    float a4 = seed + 4.0f, a5 = seed + 5.0f, a6 = seed + 6.0f, a7 = seed + 7.0f;
    const long long t0 = clock64();
    int round = 0;
    do {
#pragma unroll
        for (int k = 0; k < 16; ++k) {
            FMA8(m, c)
        }
        ++round;
    } while (round < iterations || (spin_cycles > 0 && clock64() - t0 < spin_cycles));
    const float s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    // Never true (s > 0), but the compiler cannot know: keeps every FMA live with no stores.
    if (s == -1.0f) {
        out[blockIdx.x] = s;
    }
}
