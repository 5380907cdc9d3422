"""brt: Block-Recurrent Transformers and relatives in JAX/Flax."""
import pathlib

import setuptools

here = pathlib.Path(__file__).parent
requirements = [
    line.strip()
    for line in (here / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setuptools.setup(
    name="brt",
    version="0.1.0",
    description="Block-Recurrent Transformers, Transformer-XL, sliding-window, "
    "feedback and RMT language models in JAX/Flax.",
    packages=setuptools.find_packages(include=["brt", "brt.*"]),
    python_requires=">=3.11",
    install_requires=requirements,
    extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4"]},
)
