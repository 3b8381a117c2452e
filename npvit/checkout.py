"""Where the npvit checkout is, for the notebooks: the folder that holds notebooks/ (its CIFAR-10 sample) and
reference/ (the article's PyTorch model), found from the working folder or from where npvit is installed."""
import os

MARK = os.path.join("notebooks", "cifar10_sample.npz")


def find_checkout(start=None):
    """The checkout: ``start`` (default the working folder) or the first folder above it that holds
    notebooks/cifar10_sample.npz; else the one this npvit was installed from (pip install -e .)."""
    folder = os.path.abspath(start or os.getcwd())
    while not os.path.isfile(os.path.join(folder, MARK)):
        if folder == os.path.dirname(folder):
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            if os.path.isfile(os.path.join(here, MARK)):
                return here
            raise FileNotFoundError(f"no npvit checkout (a folder holding {MARK}) at or above {start or os.getcwd()},"
                                    f" and npvit is not installed from one: clone npvit and pip install -e . there")
        folder = os.path.dirname(folder)
    return folder
