# tbot: the same steps as the README's `make run` (a venv, pinned dependencies, the main job).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make git && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . /app
RUN python3 -m venv .venv \
 && .venv/bin/python -m pip install --quiet --upgrade pip \
 && .venv/bin/python -m pip install --quiet -c constraints.txt -e '.[test]' \
 && touch .venv/.installed
ENV PATH=/app/.venv/bin:$PATH
# What this image is, for the deployment history every trader start records (docker-compose.yml passes both).
ARG TBOT_IMAGE=
ARG TBOT_COMMIT=unknown
ENV TBOT_IMAGE=$TBOT_IMAGE TBOT_COMMIT=$TBOT_COMMIT
# Mount a store with -v $PWD/data:/app/data to keep candles between runs; `docker run IMAGE config` shows where everything is.
# JupyterLab on the notebooks: docker run -p 8888:8888 --entrypoint make IMAGE lab LAB_ARGS="--ip=0.0.0.0 --no-browser"
ENTRYPOINT ["tbot"]
CMD ["run"]
