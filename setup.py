from setuptools import setup

setup(
    name="minibt",
    version="0.1.0",
    description="A small BitTorrent client for Raspberry-Pi-class machines",
    packages=["minibt"],
    package_data={"minibt": ["py.typed"]},
    python_requires=">=3.11",
    install_requires=["bencode2>=0.3.20", "psutil>=5.9"],
    extras_require={
        "mse": ["cryptography>=42"],  # RC4 for MSE/PE (minibt.mse)
        "test": ["pytest>=7", "hypothesis>=6", "ruff", "mypy", "libtorrent>=2.0", "cryptography", "pytest-timeout"]},
    entry_points={"console_scripts": ["minibt = minibt.__main__:run"]},
)
