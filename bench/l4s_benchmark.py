"""Train and score slidemap on a Landslide4Sense-format folder, beside the benchmark's U-Net baseline.

    python bench/l4s_benchmark.py --data DIR --train-list train.txt --val-list val.txt [--epochs N ...]

imports both lists (``slidemap l4s import``), trains on the first (``slidemap train``), predicts the
second in the benchmark's submission format and pools pixel counts over all its patches as the
benchmark does (``slidemap predict --chips ... --evaluate``), then prints precision, recall, F1 and IoU
beside the published U-Net baseline (trained on 3799 patches, scored on the 245 validation patches).
The lists may be the benchmark's own (``TrainData/img/image_1.h5`` relative to ``--data``) or bare
names. Run without arguments it is a smoke run on ../shared/data/landslide4sense-sample (5 patches to
train, 1 to validate): it shows the pipeline works end to end, and its figures are not a score.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from slidemap.errors import UserError
from slidemap.formats.prediction import PatchMetrics, PatchPrediction
from slidemap.raster.metrics import Counts
from slidemap.sources.l4s import L4S_BASELINE, import_l4s
from slidemap.stages import predict, train
from slidemap.stages.patches import format_table

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "landslide4sense-sample"
SMOKE_TRAIN = [1, 2, 3, 16, 27]
SMOKE_VAL = [28]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, help="Landslide4Sense folder the lists are relative to "
                   "(default: the 6-patch sample, a smoke run)")
    p.add_argument("--train-list", type=Path, help="list of training patches, one per line")
    p.add_argument("--val-list", type=Path, help="list of validation patches (with masks), one per line")
    p.add_argument("--work", type=Path, help="folder for chip sets, run and prediction (default: a new "
                   "temporary folder)")
    p.add_argument("--model", default="unet", choices=["unet", "resunet"])
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (default 50; smoke run 2)")
    p.add_argument("--batch-size", type=int, default=None, help="patches per batch (default 16; smoke run 4)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", default="bce", choices=["bce", "bce+dice", "focal"])
    p.add_argument("--pos-weight", type=float, default=None, help="weight of landslide pixels in BCE")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training patches held out for early stopping and the threshold")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--threshold", default="best", help="'best' (F1 optimum on the held-out training "
                   "patches), '0.5' or a number")
    p.add_argument("--published-stats", action="store_true",
                   help="standardise with the dataset's published mean/std, not the training patches'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    given = [args.data, args.train_list, args.val_list]
    if any(x is not None for x in given) and not all(x is not None for x in given):
        p.error("give --data, --train-list and --val-list together (or none of them for a smoke run)")
    return args


def smoke_lists(work: Path) -> tuple[Path, Path, Path]:
    """Train/validation lists over the sample folder, in the benchmark's own list style."""
    if not SAMPLE.is_dir():
        raise UserError(f"--data: not given and the sample {SAMPLE} is absent; give --data, --train-list "
                        f"and --val-list")
    train_list, val_list = work / "train.txt", work / "val.txt"
    train_list.write_text("".join(f"img/image_{n}.h5\n" for n in SMOKE_TRAIN))
    val_list.write_text("".join(f"img/image_{n}.h5\n" for n in SMOKE_VAL))
    return SAMPLE, train_list, val_list


def run(args: argparse.Namespace) -> dict:
    smoke = args.data is None
    work = args.work or Path(tempfile.mkdtemp(prefix="slidemap-l4s-"))
    work.mkdir(parents=True, exist_ok=True)
    data, train_list, val_list = smoke_lists(work) if smoke else (args.data, args.train_list, args.val_list)
    epochs = args.epochs if args.epochs is not None else (2 if smoke else 50)
    batch_size = args.batch_size if args.batch_size is not None else (4 if smoke else 16)
    print(f"work folder {work}")
    if smoke:
        print(f"SMOKE RUN on the {len(SMOKE_TRAIN) + len(SMOKE_VAL)}-patch sample ({data}): it checks the "
              f"pipeline end to end; its figures are NOT a score")
    t0 = time.perf_counter()

    train_chips = import_l4s(data, work / "train_chips", list_file=train_list,
                             published_stats=args.published_stats)
    val_chips = import_l4s(data, work / "val_chips", list_file=val_list)
    if val_chips.masks is None:
        raise UserError(f"--val-list {val_list}: its patches have no masks; give a split with masks")
    t_import = time.perf_counter() - t0
    print(f"imported {len(train_chips)} training and {len(val_chips)} validation patches in {t_import:.1f} s")

    result = train.run(train.TrainOptions(
        chips=[train_chips.path], out=work / "run", model=args.model, filters=args.filters,
        batch_size=batch_size, epochs=epochs, lr=args.lr, val_fraction=args.val_fraction, augment=True,
        patience=args.patience, bands=None, loss=args.loss, pos_weight=args.pos_weight, seed=args.seed,
        device=args.device, resume=False))
    t_train = time.perf_counter() - t0 - t_import
    print(f"trained {args.model} ({args.filters} filters, up to {epochs} epochs) in {t_train:.1f} s: "
          f"{result.bundle}")

    pred = predict.run(predict.PredictOptions(model=result.bundle, chips=val_chips.path,
                                              out=work / "val_prediction", threshold=args.threshold,
                                              device=args.device, evaluate=True))
    t_eval = time.perf_counter() - t0 - t_import - t_train
    assert isinstance(pred.meta, PatchPrediction) and pred.evaluation is not None
    metrics = pred.evaluation.metrics
    assert isinstance(metrics, PatchMetrics)
    scored = {**metrics.scores.model_dump(), "threshold": round(pred.meta.threshold, 4)}
    print(f"predicted and evaluated {len(val_chips)} validation patches in {t_eval:.1f} s "
          f"(threshold {scored['threshold']})")
    print()
    print(format_table(scored, Counts(**metrics.counts), len(val_chips), baseline=L4S_BASELINE))
    print("baseline: the benchmark's U-Net, trained on 3799 patches, scored on its 245 validation patches")
    if smoke:
        print("(smoke run: 5 training patches and a couple of epochs; compare only a full-dataset run)")
    print(f"submission-format masks: {work / 'val_prediction'}")
    return scored


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
