"""Facts about the datasets published weights were trained on (class names, normalisation), shared by
the model configs here and the data loaders in ``training.data``."""

FASHION_MNIST_CLASSES = (
    'T-shirt/top',
    'Trouser',
    'Pullover',
    'Dress',
    'Coat',
    'Sandal',
    'Shirt',
    'Sneaker',
    'Bag',
    'Ankle boot',
)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)  # of the 60k training images, in [0, 1]
# How the zoo's Fashion-MNIST weights were trained and tested (the bundled fmnist_* recipes).
FASHION_MNIST_TRAINING_DATA = (
    'Fashion-MNIST (Zalando, MIT; Debian package dataset-fashion-mnist): the first 20,000 '
    'training images; the last 5,000 training images validate'
)
FASHION_MNIST_TEST_SPLIT = 'Fashion-MNIST test split (10,000 images)'
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
