"""Every measuring protocol on a snapshot and a random net, timed.

The figures of docs/evaluation.md's "Measured with the reference defaults"
table: each tool as the README runs it, with its defaults
(``--preprocess reference``, the reference settings of docs/evaluation.md's
tables), on the small sets this machine has, and ``--random`` so the random
net (Caffe's fillers, ``--seed``, BatchNorm on batch statistics) goes
through the same run.

    .venv/bin/python bench/protocols.py
        [--weights demo_out/train_out/model_iter_60.caffemodel]
        [--out /tmp/protocols] [--only probe_gcompris ...]

Sets: GCompris's categorisation pictures
(``debian_photos.gcompris_categories``, split in half), elpv mono / poly
cells (``tests/labelled_fixtures.elpv_folder``, 100 a class), the
hand-labelled VOC layout (``tests/labelled_fixtures.voc_folder``) and the
embedded held-out photos. The iteration counts are cut to what a 2-core CPU
runs in minutes (the flags are printed with each figure); the reference
lengths (80k iterations, 1,000 ascent steps) are the tools' defaults and
run on a GPU. Prints one line per protocol and net and writes
protocols.json (figures, seconds, the command) under --out.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))

from deepcontext.data import debian_photos  # noqa: E402
import labelled_fixtures  # noqa: E402

DEMO = os.path.join(ROOT, 'demo_out', 'train_out', 'model_iter_60.caffemodel')


def _pct(values):
    return ' '.join('%.1f' % (100 * v) for v in values)


def _pretext(j):
    return {r['net']: '%.1f%% of %d pairs' % (100 * r['accuracy'], r['pairs'])
            for r in j['results']}


def _probe(j):
    layers = j['layers']
    return {tag: '%s: %s' % (' '.join(layers),
                             _pct(r[l]['accuracy'] for l in layers))
            for tag, r in j['results'].items()}


def _lowshot(j):
    layer = j['layers'][-1]
    return {tag: '%s k=%s: %s mAP' % (
        layer, ','.join(map(str, j['ks'])),
        _pct(r[layer][str(k)]['map_mean'] for k in j['ks']))
        for tag, r in j['results'].items()}


def _voc(j):
    return {tag: 'mAP %.1f%% (loss %.3f -> %.3f)' % (
        100 * r['map'], r['loss'][0], r['loss'][-1])
        for tag, r in j['results'].items()}


def _visualize(j):
    med = statistics.median
    return {tag: '%s mean response, median %.3g -> %.3g' % (
        r['ascent_layer'], med(r['ascent_start']), med(r['ascent_end']))
        for tag, r in j['results'].items()}


def _nn(j):
    def mean(rows):
        return statistics.fmean(v for row in rows for v in row)
    return {tag: ', '.join('%s mean neighbour correlation %.3f'
                           % (layer, mean(v['correlation']))
                           for layer, v in r['layers'].items())
            for tag, r in j['nets'].items()}


def protocols(weights, root):
    gcompris = debian_photos.gcompris_categories()
    elpv = os.path.join(root, 'elpv')
    if not os.path.isdir(elpv):
        labelled_fixtures.elpv_folder(elpv, 100)
    voc = os.path.join(root, 'voc', 'VOC2007')
    if not os.path.isdir(voc):
        voc = labelled_fixtures.voc_folder(os.path.join(root, 'voc'))
    net = ['--weights', weights, '--random']
    return [
        ('pretext', 'eval_pretext.py', net, 'pretext.json', _pretext),
        ('probe_gcompris', 'probe_layers.py', net + ['--images', gcompris],
         'probe_layers.json', _probe),
        ('probe_elpv', 'probe_layers.py', net + ['--images', elpv],
         'probe_layers.json', _probe),
        ('lowshot_gcompris', 'lowshot_svm.py',
         net + ['--images', gcompris, '--ks', '1', '2', '4', '8'],
         'lowshot.json', _lowshot),
        ('voc_classify', 'voc_classify.py',
         net + ['--voc', voc, '--iters', '60', '--batch-size', '10'],
         'voc_classify.json', _voc),
        ('visualize', 'visualize_filters.py',
         net + ['--layer', 'relu5', '--steps', '60'],
         'visualize.json', _visualize),
        ('nn_patches', 'nn_patches.py',
         net + ['--images'] + sorted(
             os.path.join(gcompris, 'monuments', f)
             for f in os.listdir(os.path.join(gcompris, 'monuments')))[:12],
         'nn.json', _nn),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--weights', default=DEMO)
    p.add_argument('--out', default='/tmp/deepcontext_protocols')
    p.add_argument('--only', nargs='+', help='run these protocols only')
    args = p.parse_args()
    if not os.path.exists(args.weights):
        sys.exit('protocols: no snapshot %s (run make demo first)'
                 % args.weights)
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, 'protocols.json')
    report, failed = {}, []
    if args.only and os.path.exists(summary_path):   # keep the others' runs
        with open(summary_path) as f:
            report = json.load(f)
    for name, tool, flags, jname, summary in protocols(args.weights,
                                                       args.out):
        if args.only and name not in args.only:
            continue
        out = os.path.join(args.out, name)
        cmd = [sys.executable, os.path.join(ROOT, 'tools', tool)] + flags + [
            '--out', out]
        start = time.time()
        done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        seconds = time.time() - start
        with open(os.path.join(args.out, name + '.log'), 'w') as f:
            f.write(done.stdout)
        if done.returncode:
            failed.append(name)
            print('%-17s FAILED (exit %d after %.0f s), last lines:\n%s'
                  % (name, done.returncode, seconds,
                     '\n'.join(done.stdout.splitlines()[-5:])), flush=True)
            continue
        with open(os.path.join(out, jname)) as f:
            figures = summary(json.load(f))
        report[name] = {'seconds': round(seconds, 1), 'figures': figures,
                        'command': ' '.join(cmd[1:])}
        for tag, text in figures.items():
            print('%-17s %-8s %s' % (name, tag, text))
        print('%-17s %.0f s for both nets' % (name, seconds), flush=True)
    with open(summary_path, 'w') as f:
        json.dump(report, f, indent=1)
    print('wrote %s' % summary_path)
    if failed:
        sys.exit('protocols: %s failed (logs under %s)'
                 % (', '.join(failed), args.out))


if __name__ == '__main__':
    main()
