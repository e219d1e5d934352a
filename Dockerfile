# One image, one CLI: tierguard operator | proxy | sim | replay | calibrate | demo | promote | abort | status
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --prefix=/install '.[fast]'

FROM python:3.11-slim
RUN useradd --uid 10001 --create-home tierguard
COPY --from=build /install /usr/local
USER 10001
EXPOSE 8080
ENTRYPOINT ["tierguard"]
CMD ["--help"]
