# Training container: `docker build -t token-reduction .`
#   docker run --gpus all --shm-size 16g -v /data:/data -v $PWD/runs:/workspace/runs token-reduction \
#     fit --config clip_vit_l14_336 --data.cache_dir /data/caches/clip-vit-l14-336
# (configs are carried in the package and found by name; --config also takes a mounted YAML path)
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
# The package with the resources its wheel carries: configs and the default set's spec.
COPY setup.cfg setup.py README.md ./
COPY lightning_configs ./lightning_configs
COPY data/default_set.json data/README.md ./data/
COPY token_reduction ./token_reduction
RUN pip install ".[video]" \
    && cd / && python -c "from token_reduction.resources import find_config; print(find_config('clip_vit_l14_336'))"

USER trainer
WORKDIR /workspace
# TensorBoard: docker run -p 6006:6006 --entrypoint tensorboard token-reduction --logdir runs --bind_all
EXPOSE 6006
ENTRYPOINT ["token-reduction"]
CMD ["--help"]
