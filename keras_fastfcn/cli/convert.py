"""`keras-fastfcn convert`: a PyTorch FastFCN checkpoint -> a `.keras` model.

`--format official` (default): the authors' checkpoints (wuhuikai/FastFCN);
`--format mmseg`: mmsegmentation's FastFCN models (`keras_fastfcn.convert.mmseg`).

Example:
    keras-fastfcn convert --checkpoint encnet_res50_pcontext.pth.tar --dataset pcontext \
        --output encnet_jpu_res50_pcontext.keras
    keras-fastfcn convert --format mmseg --checkpoint fastfcn_r50-d32_jpu_psp_512x1024.pth \
        --output fastfcn_psp_cityscapes.keras
"""

from keras_fastfcn.cli.common import positive_int


FORMATS = ("official", "mmseg")


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="PyTorch checkpoint (.pth / .pth.tar; a state dict or "
                             "a training checkpoint with 'state_dict')")
    parser.add_argument("--format", default="official", choices=FORMATS,
                        help="official: the authors' FastFCN checkpoints (default); mmseg: "
                             "mmsegmentation's FastFCN models (ResNetV1c + JPU + PSP, ASPP "
                             "or EncHead; head, encoder and classes read from the file)")
    parser.add_argument("--output", required=True,
                        help="output .keras model (or .weights.h5; with --backbone-only a "
                             ".weights.h5 encoder file)")
    parser.add_argument("--head",
                        help="a head with official checkpoint keys: encnet, psp, deeplab or "
                             "fcn, or one of yours mapped with "
                             "convert.mapping.register_head_mapping (default: from the "
                             "checkpoint's keys)")
    parser.add_argument("--encoder", "--backbone", dest="encoder",
                        help="deep-stem encoder: resnet50s, resnet101s or resnet152s; "
                             "resnet50_v1c for --format mmseg "
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
                                       read_class_names)
    from keras_fastfcn.convert.checkpoint import load_checkpoint

    if not args.output.endswith((".keras", ".weights.h5")):
        raise ValueError(f"--output must end with .keras or .weights.h5, got {args.output}.")
    mmseg = getattr(args, "format", "official") == "mmseg"
    if mmseg and args.backbone_only:
        raise ValueError("--backbone-only reads official checkpoints only, not --format mmseg.")
    if mmseg and args.upsampler not in ("auto", "jpu"):
        raise ValueError(f"--upsampler {args.upsampler}: mmsegmentation's FastFCN models all "
                         "use the JPU; leave --upsampler out with --format mmseg.")
    class_names = read_class_names(args.class_names) if args.class_names else None
    try:
        state_dict, meta = load_checkpoint(args.checkpoint)
    except RuntimeError as err:  # PyTorch missing
        raise CommandError(str(err)) from err
    if args.backbone_only:
        encoder = convert_backbone_checkpoint(state_dict, backbone=args.encoder,
                                              output=args.output)
        print(f"Wrote the encoder weights ({encoder.name.rsplit('_os', 1)[0]}) to "
              f"{args.output}")
        return 0
    if mmseg:
        from keras_fastfcn.convert.mmseg import convert_mmseg_checkpoint

        model = convert_mmseg_checkpoint(
            {"state_dict": state_dict, "meta": meta}, output=args.output,
            num_classes=args.num_classes, class_names=class_names, dataset=args.dataset,
            head=args.head, encoder=args.encoder,
            aux=False if args.inference_only else None,
            se_loss=False if args.inference_only else None)
    else:
        model = convert_checkpoint(
            state_dict, output=args.output, head=args.head, encoder=args.encoder,
            num_classes=args.num_classes,
            upsampler=None if args.upsampler == "none" else args.upsampler,
            aux=False if args.inference_only else None,
            se_loss=False if args.inference_only else None,
            dataset=args.dataset, class_names=class_names)
    labels = "with class names" if model.class_names else "without class names"
    print(f"Converted {args.checkpoint}: {model.head_name} head, "
          f"{model.backbone.encoder_name}, upsampler={model.backbone.upsampler_name}, "
          f"{model.num_classes} classes, aux={model.aux}, se_loss={model.se_loss} ({labels}); "
          f"wrote {args.output}")
    return 0
