"""isicflow: ISIC archive -> sharded TFRecords (Apache Beam) -> CNN and DCGAN trainers (TensorFlow)."""
from setuptools import find_packages, setup

setup(
    name="isicflow",
    version="0.1.0",
    description="High-throughput data engine and trainers for ISIC dermoscopy images",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["isicflow", "isicflow.*", "beam_jobs", "beam_jobs.*",
                                    "trainer", "trainer.*"]),
    package_data={"isicflow.protos": ["*.binpb"]},  # tf.train.Example's compiled descriptors
    install_requires=[
        # tensorflow-io 0.37.1 (its newest release) loads its ops only with TensorFlow 2.17.x.
        "tensorflow==2.17.1",
        "tensorflow-io==0.37.1",
        "keras==3.15.1",
        "apache-beam==2.77.0",
        "google-crc32c>=1.5",  # TFRecord checksums in the engine's workers, without TensorFlow
        "protobuf>=4.25,<5",  # what TensorFlow 2.17 and the generated schema code need
        "pillow>=10",
        "numpy>=1.26,<2",
        "scikit-learn>=1.4",
        "absl-py>=2.1",
        "matplotlib>=3.8",
        "tensorboard-plugin-profile>=2.17",
        # TensorBoard 2.17 (`make tensorboard`) imports pkg_resources, gone from setuptools 81.
        "setuptools>=70,<81",
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "grpcio-tools==1.62.3"],
    },
)
