# One image, one CLI: tierguard operator | proxy | sim | replay | calibrate | demo | promote | abort | status
#
# BASE defaults to the official Python image. The test suite builds the same file with
# `buildah bud --build-arg BASE=<a local Debian bookworm + python3 image>` where no registry
# is reachable (tests/infra/images.py); any base with python3 >= 3.11, pip and useradd works.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install '.[fast]'

FROM ${BASE}
RUN useradd --uid 10001 --create-home tierguard
COPY --from=build /install /usr/local
USER 10001
EXPOSE 8080
ENTRYPOINT ["tierguard"]
CMD ["--help"]
