# syntax=docker/dockerfile:1
# Build: docker build -t auditlog .
# Run:   docker run -e AUDITLOG_DATABASE_URL=postgres://... -p 8080:8080 auditlog
# The image has no PostgreSQL of its own: set database.url (the embedded
# default is for local development only).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/auditlog/auditlog/app.Version=${VERSION}" \
    -o /out/auditlog .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/auditlog /usr/local/bin/auditlog
COPY config.yaml /etc/auditlog/config.yaml
WORKDIR /var/lib/auditlog
EXPOSE 8080
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/auditlog"]
CMD ["serve", "--config", "/etc/auditlog/config.yaml"]
