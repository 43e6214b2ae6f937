"""Open-in-Colab and Kaggle badge markdown for a notebook path (tests check README and unit pages use it).

    python scripts/badges.py units/unit1/01_ddpm_and_ddim.ipynb

The badges open the executed copy (every output in place) that the site workflow publishes to the branch
EXECUTED_BRANCH (scripts/publish_notebooks.py); the sources stay on BRANCH, without outputs.
"""
import sys

REPO = "coursekit/coursekit"
BRANCH = "main"
EXECUTED_BRANCH = "notebooks"


def badges(path: str) -> str:
    src = f"https://github.com/{REPO}/blob/{EXECUTED_BRANCH}/{path}"
    colab = f"https://colab.research.google.com/github/{REPO}/blob/{EXECUTED_BRANCH}/{path}"
    kaggle = f"https://kaggle.com/kernels/welcome?src={src}"
    return (f"[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab}) "
            f"[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]({kaggle})")


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(badges(p))
