"""`keras-fastfcn demo`: the whole workflow on the generated demo dataset, offline.

1. train the `demo` config (EncNet + JPU on ResNet-50, small JPU width) for a few
   minutes on a CPU, with the official recipe;
2. evaluate it on the demo validation split (official pixAcc / mIoU);
3. predict a few validation images (class map, colour mask, overlay PNGs);
4. export it as a TF Serving SavedModel under `saved_models/demo/VERSION`;

then print where each result went. Every step is the corresponding
`keras-fastfcn` command, so the output shows what a user would type.
"""

import os

from keras_fastfcn import cli
from keras_fastfcn.cli.common import positive_int


def add_arguments(parser):
    parser.add_argument("--output-dir", default=os.path.join("runs", "demo"),
                        help="folder for the run (model, logs, evaluation, predictions)")
    parser.add_argument("--export-dir", default=os.path.join("saved_models", "demo"),
                        help="TF Serving model folder; the next free version is used")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="override the demo config's number of epochs")
    parser.add_argument("--samples", type=positive_int, default=4,
                        help="validation images to predict")


def _step(title, argv):
    print(f"\n=== {title}: keras-fastfcn {' '.join(argv)}", flush=True)
    code = cli.main(argv)
    if code:
        raise cli.CommandError(f"step '{title}' failed with exit code {code}")


def _write_samples(folder, count):
    from PIL import Image

    from keras_fastfcn.data.sources import demo as demo_data

    os.makedirs(folder, exist_ok=True)
    images, _ = demo_data.generate("val", num_images=max(count, 1))
    paths = []
    for i, image in enumerate(images[:count]):
        path = os.path.join(folder, f"demo_val_{i:02d}.png")
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def run(args):
    out = args.output_dir
    model_path = os.path.join(out, "model.keras")
    train = ["train", "--config", "demo", "--output-dir", out, "--overwrite"]  # re-runnable
    if args.epochs is not None:
        train += ["--epochs", str(args.epochs)]
    _step("1/4 train", train)
    eval_json = os.path.join(out, "evaluation.json")
    _step("2/4 evaluate", ["evaluate", "--model", model_path, "--data", "demo", "--split", "val",
                           "--output", eval_json])
    samples = os.path.join(out, "samples")
    _write_samples(samples, args.samples)
    predictions = os.path.join(out, "predictions")
    _step("3/4 predict", ["predict", "--model", model_path, "--input", samples,
                          "--output", predictions])
    _step("4/4 export", ["export", "--model", model_path, "--format", "saved_model",
                         "--output", args.export_dir])
    print("\nDone. Results:")
    print(f"  trained model      {model_path} (best: {os.path.join(out, 'best.keras')})")
    print(f"  training logs      {os.path.join(out, 'logs')} (tensorboard --logdir ...), "
          f"{os.path.join(out, 'history.csv')}")
    print(f"  evaluation         {eval_json}")
    print(f"  predictions        {predictions}/ (*_labels.png, *_color.png, *_overlay.png)")
    print(f"  SavedModel         {args.export_dir}/<version>/ (see saved_models/README.md)")
    return 0
