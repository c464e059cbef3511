"""Plot a training run: loss per pair, step/data time, parameter norms.

    python tools/plot_log.py demo_out/train_out [--out DIR] [--window 20]

Reads OUTDIR/out.log and the saved statistics (stats.json, or the
original's nrm.npy / intval.npy) and writes loss.png, timing.png,
norms.png and summary.json into --out (default: OUTDIR).  Safe while the
run is training: it only reads, and a half-written last line is ignored.
"""
import argparse
import os

from deepcontext.eval import logparse, plots
from deepcontext.eval.toolargs import write_json


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('outdir', help="a run's folder (holds out.log)")
    p.add_argument('--out', help='folder for the PNGs (default: outdir)')
    p.add_argument('--window', type=int, default=20,
                   help='steps in the loss moving average')
    return p.parse_args()


def main():
    args = parse_args()
    dest = args.out or args.outdir
    for path in plots.plot_run(args.outdir, dest, args.window):
        print('wrote %s' % path)
    log = logparse.parse_out_log(os.path.join(args.outdir, 'out.log'))
    summary = plots.run_summary(log, args.window)
    write_json(dest, 'summary.json', summary)
    if summary['steps']:
        print('%d steps, iterations %d-%d; loss per pair (%d-step mean) '
              '%.4f -> %.4f, chance ln 8 = %.4f; median step %.3f s, '
              'data wait %.4f s'
              % (summary['steps'], summary['first_iteration'],
                 summary['last_iteration'], args.window,
                 summary['smoothed_loss_start'], summary['smoothed_loss_end'],
                 summary['chance_loss'], summary['median_step_time'],
                 summary['median_data_time']))


if __name__ == '__main__':
    main()
