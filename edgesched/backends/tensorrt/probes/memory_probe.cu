// Memory-bound (streaming) probe: copies float4s from src to dst, adding 1 to .x.
//
// Per round, block b streams its own span of blockDim.x * per_thread float4s, coalesced
// (thread t reads element t, t + blockDim.x, ...): 16 B read + 16 B written = 32 B of DRAM
// traffic per element, no reuse. Successive rounds and successive blocks move on through the
// arrays (n4 float4s each; the host makes them far larger than L2 and advances offset4 between
// launches), so no launch re-reads what an earlier one left in L2. Fixed work per block:
// rounds x span elements; with spin_cycles > 0 a block keeps streaming until its SM clock has
// advanced spin_cycles (clock64(), SM cycles): a bandwidth load of known footprint and time.
// The host keeps span <= n4 and offset4 < n4, so one subtraction wraps every index.

extern "C" __global__ void memory_probe(const float4* src, float4* dst, long long n4,
                                        long long offset4, int per_thread, int rounds,
                                        long long spin_cycles)
{
    const long long span = (long long)blockDim.x * per_thread;
    const long long t0 = clock64();
    int round = 0;
    do {
        long long base = (offset4 + ((long long)round * gridDim.x + blockIdx.x) * span) % n4;
        for (int k = 0; k < per_thread; ++k) {
            long long i = base + (long long)k * blockDim.x + threadIdx.x;
            if (i >= n4) {
                i -= n4;
            }
            float4 v = src[i];
            v.x += 1.0f;
            dst[i] = v;
        }
        ++round;
    } while (round < rounds || (spin_cycles > 0 && clock64() - t0 < spin_cycles));
}
