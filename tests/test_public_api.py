"""The public API stays where users import it from (``from minunet import ...``)."""

import minunet


def test_the_public_names_are_the_library_s_own_classes():
    from minunet.model import UNet
    from minunet.nn import BatchNorm2d, Concat, Conv2d, ConvTranspose2d, Dropout, MaxPool2d, ReLU
    from minunet.nn.losses import SoftmaxCrossEntropy
    from minunet.nn.optim import SGD, Adam, AdamW

    for cls in (UNet, BatchNorm2d, Concat, Conv2d, ConvTranspose2d, Dropout, MaxPool2d, ReLU):
        assert getattr(minunet, cls.__name__) is cls
    for cls in (SoftmaxCrossEntropy, SGD, Adam, AdamW):
        assert getattr(minunet, cls.__name__) is cls
    assert set(minunet.__all__) <= set(dir(minunet))
    assert minunet.get_backend("numpy").__name__ == "numpy"
