# syntax=docker/dockerfile:1
# Build: docker build -t auditlog .
# Run:   docker run -e AUDITLOG_DATABASE_URL=postgres://... -p 8080:8080 --stop-timeout 45 auditlog
# The image has no PostgreSQL of its own: set database.url (the embedded
# default is for local development only). The migrations are embedded in the
# binary (goose, package migrations) and applied by `serve` on start.
# --stop-timeout: give the graceful stop (http.shutdown_grace, 30s by
# default, plus the relay's last batch) time before Docker's SIGKILL.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/auditlog/auditlog/app.Version=${VERSION}" \
    -o /out/auditlog .

# distroless static: no shell, no libc, runs as the nonroot user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/auditlog /usr/local/bin/auditlog
COPY config.yaml /etc/auditlog/config.yaml
WORKDIR /var/lib/auditlog
USER nonroot:nonroot
EXPOSE 8080
STOPSIGNAL SIGTERM
# No curl in the image: the binary asks its own /healthz (200 while the
# process serves). Use /readyz (database reachable, migrations applied) for
# load-balancer readiness instead, so an outage does not restart containers.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/auditlog", "healthcheck", "--config", "/etc/auditlog/config.yaml"]
ENTRYPOINT ["/usr/local/bin/auditlog"]
CMD ["serve", "--config", "/etc/auditlog/config.yaml"]
