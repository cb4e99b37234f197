"""`keras-fastfcn convert`: an official PyTorch FastFCN checkpoint -> a `.keras` model.

Example:
    keras-fastfcn convert --checkpoint encnet_res50_pcontext.pth.tar --dataset pcontext \
        --output encnet_jpu_res50_pcontext.keras
"""

from keras_fastfcn.cli.common import positive_int


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="official PyTorch checkpoint (.pth / .pth.tar; a state dict or "
                             "a training checkpoint with 'state_dict')")
    parser.add_argument("--output", required=True,
                        help="output .keras model (or .weights.h5; with --backbone-only a "
                             ".weights.h5 encoder file)")
    parser.add_argument("--head",
                        help="a head with official checkpoint keys: encnet, psp, deeplab or "
                             "fcn, or one of yours mapped with "
                             "convert.mapping.register_head_mapping (default: from the "
                             "checkpoint's keys)")
    parser.add_argument("--encoder", "--backbone", dest="encoder",
                        help="deep-stem encoder: resnet50s, resnet101s or resnet152s "
                             "(default: from the checkpoint's block counts)")
    parser.add_argument("--num-classes", type=positive_int,
                        help="classes (default: from the classifier's shape)")
    parser.add_argument("--upsampler", default="auto",
                        choices=("auto", "jpu", "jpu_x", "none"),
                        help="JPU variant; 'none' for a dilated-encoder model "
                             "(default: from the checkpoint's keys)")
    parser.add_argument("--dataset",
                        help="dataset the model was trained on, carried by the model for "
                             "labels and colours: pascal_context (or pcontext), ade20k, ...")
    parser.add_argument("--class-names",
                        help="text file with one class name per line (default: the "
                             "dataset's names, when keras_fastfcn knows them)")
    parser.add_argument("--inference-only", action="store_true",
                        help="drop the auxiliary head and SE branch (used in training only)")
    parser.add_argument("--backbone-only", action="store_true",
                        help="write only the deep-stem encoder's weights (.weights.h5), from "
                             "a segmentation checkpoint or the official ImageNet .pth")


def run(args):
    from keras_fastfcn.cli import CommandError
    from keras_fastfcn.convert import (convert_backbone_checkpoint, convert_checkpoint,
                                       load_state_dict, read_class_names)

    if not args.output.endswith((".keras", ".weights.h5")):
        raise ValueError(f"--output must end with .keras or .weights.h5, got {args.output}.")
    class_names = read_class_names(args.class_names) if args.class_names else None
    try:
        state_dict = load_state_dict(args.checkpoint)
    except RuntimeError as err:  # PyTorch missing
        raise CommandError(str(err)) from err
    if args.backbone_only:
        encoder = convert_backbone_checkpoint(state_dict, backbone=args.encoder,
                                              output=args.output)
        print(f"Wrote the encoder weights ({encoder.name.rsplit('_os', 1)[0]}) to "
              f"{args.output}")
        return 0
    model = convert_checkpoint(
        state_dict, output=args.output, head=args.head, encoder=args.encoder,
        num_classes=args.num_classes, upsampler=None if args.upsampler == "none" else args.upsampler,
        aux=False if args.inference_only else None,
        se_loss=False if args.inference_only else None,
        dataset=args.dataset, class_names=class_names)
    labels = "with class names" if model.class_names else "without class names"
    print(f"Converted {args.checkpoint}: {model.head_name} head, "
          f"{model.backbone.encoder_name}, upsampler={model.backbone.upsampler_name}, "
          f"{model.num_classes} classes, aux={model.aux}, se_loss={model.se_loss} ({labels}); "
          f"wrote {args.output}")
    return 0
