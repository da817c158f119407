# syntax=docker/dockerfile:1
# One image with the binaries: producer, worker, collector, mqctl, llmsim.
# Pick the process with the command, e.g. `docker run IMAGE /usr/local/bin/worker --config ...`.

FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY internal ./internal
ARG TARGETOS
ARG TARGETARCH
# What --version prints and mq_build_info exports: the context has no .git, so pass
# them, e.g. --build-arg VERSION=$(git describe --tags --always) --build-arg REVISION=$(git rev-parse HEAD).
ARG VERSION=dev
ARG REVISION=
RUN CGO_ENABLED=0 GOOS=${TARGETOS:-linux} GOARCH=${TARGETARCH} \
    go build -trimpath -ldflags="-s -w -X github.com/multiquery/multiquery/internal/version.version=${VERSION} -X github.com/multiquery/multiquery/internal/version.revision=${REVISION}" -o /out/ \
      ./cmd/producer ./cmd/worker ./cmd/collector ./cmd/mqctl ./cmd/llmsim

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# uid/gid 65532 (distroless "nonroot")
USER nonroot:nonroot
# worker ops, collector ops, llmsim
EXPOSE 9090 9091 8081
CMD ["/usr/local/bin/worker", "-h"]
