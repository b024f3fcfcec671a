# segpipe on an NVIDIA GPU: the worker by default, the gateway with another command (see docker-compose.yml).
#
#   docker build -t segpipe .
#   docker run --gpus 1 -v "$PWD/checkpoints:/models:ro" -e FASTSAM_MODEL_PATH=/models/FastSAM-x.pt \
#       -e SAM_MODEL_PATH=/models/sam2.1_hiera_tiny.pt -e KAFKA_BOOTSTRAP_SERVERS=... segpipe
#
# The base image brings torch and torchvision as a matching CUDA pair (torch 2.5.1 + CUDA 12.4 and cuDNN 9,
# Python 3.11). The host's NVIDIA driver must support that CUDA version; for an older driver pass another official
# pytorch/pytorch *-runtime tag with a lower CUDA version as BASE_IMAGE.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# segpipe itself needs only opencv-python-headless, but ultralytics depends on opencv-python, whose cv2 links
# libGL.so.1 and libgthread-2.0.so.0; whichever of the two wheels is installed last owns `cv2`, so without these
# libraries `import cv2` can fail. Versions come with the base image's Ubuntu release, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# pyproject.toml leaves torch unpinned on purpose. The CPU-only torch pin used on dev machines is not for this
# image: it would throw away CUDA, and a torch from elsewhere beside the base image's torchvision breaks
# torchvision's compiled ops. So pin exactly what the base image has, and fail the build if it has no CUDA.
RUN pip list --format=freeze | grep -iE '^(torch|torchvision)==' > /etc/segpipe-constraints.txt \
    && test "$(wc -l < /etc/segpipe-constraints.txt)" -eq 2 \
    && cat /etc/segpipe-constraints.txt \
    && python -c "import torch; assert torch.version.cuda, 'the base image has a CPU-only torch'"

# Dependencies in their own layer, so a source change does not reinstall them. sam2 (and a few small packages)
# come only as sdists: building them without isolation uses the torch installed here instead of downloading
# another one into a build environment. SAM2_BUILD_CUDA=0: sam2's optional CUDA extension is not needed, and
# this runtime image has no nvcc to build it.
COPY pyproject.toml /tmp/segpipe/pyproject.toml
RUN python -c "import tomllib; deps = tomllib.load(open('/tmp/segpipe/pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/segpipe/requirements.txt \
    && pip install -c /etc/segpipe-constraints.txt "setuptools>=69" wheel \
    && SAM2_BUILD_CUDA=0 pip install --no-build-isolation -c /etc/segpipe-constraints.txt -r /tmp/segpipe/requirements.txt

COPY . /tmp/segpipe/src
RUN SAM2_BUILD_CUDA=0 pip install --no-build-isolation -c /etc/segpipe-constraints.txt /tmp/segpipe/src \
    && rm -rf /tmp/segpipe

RUN groupadd --gid 10001 segpipe \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin segpipe

# ultralytics must never download anything at run time, and needs a writable settings directory.
ENV YOLO_OFFLINE=1 \
    YOLO_CONFIG_DIR=/tmp/ultralytics

USER 10001:10001
WORKDIR /home/segpipe

# Fail the build, not the first request, if the installed stack cannot be imported (missing system library,
# torch/torchvision mismatch). The settings directory this creates is removed so any run-time user can make it.
RUN python -c "import cv2, sam2, torchvision.ops, ultralytics, consumers.worker" \
    && rm -rf /tmp/ultralytics

CMD ["python", "-m", "consumers.worker"]
