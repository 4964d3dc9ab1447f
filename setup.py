"""isicflow: ISIC archive -> sharded TFRecords (Apache Beam) -> CNN and DCGAN trainers (TensorFlow)."""
from setuptools import find_packages, setup

# The engine on a Dask cluster: beam_jobs.dask_runner is written against (and refuses all but)
# these releases; `dev` includes them for tests/test_dask_runner.py.
DASK = ["apache-beam[dask]==2.77.0", "dask==2026.8.0", "distributed==2026.8.0"]

setup(
    name="isicflow",
    version="0.1.0",
    description="High-throughput data engine and trainers for ISIC dermoscopy images",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["isicflow", "isicflow.*", "beam_jobs", "beam_jobs.*",
                                    "trainer", "trainer.*"]),
    license="Apache-2.0",
    license_files=["LICENSE"],
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
        "scipy>=1.11",  # DCT image checks, connected components, binomial intervals
        "matplotlib>=3.8",
        "psutil>=5.9",  # benchmarks: memory of the engine's processes
        "tensorboard>=2.17,<2.18",  # `make tensorboard`, the trainers' summaries
        "tensorboard-plugin-profile>=2.17",  # the Profile tab
        "xprof>=2.17",  # trainer.profile reads traces as the Profile tab does
        # TensorBoard 2.17 (`make tensorboard`) imports pkg_resources, gone from setuptools 81.
        "setuptools>=70,<81",
    ],
    # One command per program; `python -m <module>` runs the same code.
    entry_points={"console_scripts": [
        "isicflow-preprocess=beam_jobs.preprocess:main",
        "isicflow-cnn-train=trainer.cnn.cli:run",
        "isicflow-cnn-evaluate=trainer.cnn.evaluate:run",
        "isicflow-cnn-predict=trainer.cnn.predict:run",
        "isicflow-cnn-visualize=trainer.cnn.visualize:run",
        "isicflow-cnn-pretrain=trainer.cnn.pretrain:run",
        "isicflow-gan-train=trainer.gan.cli:run",
        "isicflow-gan-sample=trainer.gan.sample:run",
        "isicflow-gan-evaluate=trainer.gan.evaluate:run",
        "isicflow-gan-curve=trainer.gan.curve:run",
        "isicflow-profile=trainer.profile:run",
    ]},
    extras_require={
        "dask": DASK,
        "dev": DASK + ["pytest>=8", "pytest-xdist>=3.5", "grpcio-tools==1.62.3",
                       # tests open the engine's output with tfds.builder_from_directory;
                       # tensorflow-metadata 1.17+ needs protobuf 5, which TensorFlow 2.17 refuses.
                       "tensorflow-datasets>=4.9", "tensorflow-metadata<1.17"],
    },
)
