"""SynthFaces rendering throughput (images/s), batched rendering on the CPU.

    PYTHONPATH=. python benchmarks/bench_data_synth.py [--size 128] [--batch 32] [--repeats 15] [--threads 2]

Checks the output first (shape, range, landmarks in the frame), then times ``SynthFaces.render``
of consecutive batches (parameter sampling included) and reports the median, p20 and p80 of
wall-clock time, CPU time and the page faults per batch. With ``--no-tune`` the glibc malloc
settings (:func:`fastlmk.data.tune_malloc`) are left alone, to show what they are worth.
"""

import argparse
import os
import resource
import statistics
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-tune", action="store_true", help="do not tune glibc malloc (FASTLMK_TUNE_MALLOC=0)")
    args = ap.parse_args()
    if args.no_tune:
        os.environ["FASTLMK_TUNE_MALLOC"] = "0"
    import torch

    from fastlmk.data import SynthFaces, tune_malloc

    if args.threads:
        torch.set_num_threads(args.threads)
    ds = SynthFaces("train", size=args.size, length=10**7)
    b = ds.render(range(args.batch))  # warm-up + correctness check
    assert b["image"].shape == (args.batch, 3, args.size, args.size) and 0 <= b["image"].min() <= b["image"].max() <= 1
    assert b["landmarks"].abs().max() <= 1
    wall, cpu, faults = [], [], []
    for r in range(args.repeats):
        idx = range((r + 1) * args.batch, (r + 2) * args.batch)
        f0, c0, w0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
        ds.render(idx)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)

    def q(xs, p):
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]

    med = statistics.median(wall)
    print(f"SynthFaces size={args.size} batch={args.batch} threads={torch.get_num_threads()} "
          f"malloc_tuned={tune_malloc()} load_avg={os.getloadavg()[0]:.1f}")
    print(f"  wall ms/batch: median {med * 1e3:.1f} (p20 {q(wall, .2) * 1e3:.1f}, p80 {q(wall, .8) * 1e3:.1f})"
          f" -> {args.batch / med:.0f} images/s (best batch {args.batch / min(wall):.0f} images/s)")
    print(f"  cpu  ms/batch: median {statistics.median(cpu) * 1e3:.1f}; page faults/batch: median {statistics.median(faults):.0f}")


if __name__ == "__main__":
    main()
