"""The benchmark's cases, and the Config each one trains with (both pipelines read it)."""

from cifar.config import Config

# case -> (model, ResNet-50 freeze mode, cache features)
CASES = {
    "cnn": ("cnn", "backbone", False),
    "resnet-frozen": ("resnet50", "backbone", False),
    "resnet-cached": ("resnet50", "backbone", True),
    "resnet-finetune": ("resnet50", "none", False),
}


def case_config(args, case: str) -> Config:
    model, freeze, cache = CASES[case]
    resnet = model == "resnet50"
    images = args.cache_images if cache else args.resnet_images if resnet else args.images
    return Config(
        model=model,
        dataset="synthetic",
        synthetic_train_size=images,
        synthetic_test_size=0,
        freeze=freeze,
        pretrained=False,  # random init: same speed, and no download
        image_size=args.image_size,
        batch_size=args.resnet_batch_size if resnet else args.batch_size,
        augment="none" if cache else "crop-flip",
        cache_features=cache,
        scheduler="none",
        mixed_precision=args.mixed_precision,
        compile=args.compile,
        tracker="none",
    )
