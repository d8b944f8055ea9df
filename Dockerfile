# Training container: `docker build -t token-reduction .`
#   docker run --gpus all --shm-size 16g -v /data:/data -v $PWD/runs:/workspace/runs token-reduction \
#     fit --config lightning_configs/clip_vit_l14_336.yaml --data.cache_dir /data/caches/clip-vit-l14-336
# The base image ships CUDA 12.4 + cuDNN 9 and a matching PyTorch, so pip keeps that torch.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg \
    HF_HOME=/workspace/.cache/huggingface

RUN useradd --create-home --uid 1000 trainer \
    && mkdir -p /workspace \
    && chown trainer:trainer /workspace

WORKDIR /opt/token_reduction
# Dependencies first (cached layer), then the code.
COPY setup.cfg setup.py README.md ./
COPY token_reduction ./token_reduction
RUN pip install ".[video]" && python -c "import token_reduction, torch; print(torch.__version__)"
COPY lightning_configs /workspace/lightning_configs

USER trainer
WORKDIR /workspace
# TensorBoard: docker run -p 6006:6006 --entrypoint tensorboard token-reduction --logdir runs --bind_all
EXPOSE 6006
ENTRYPOINT ["token-reduction"]
CMD ["--help"]
