# cliproxy in a container: built on Debian, run on Debian slim as a non-root
# user. Volumes: /etc/cliproxy (config.yaml), /data/auths (auth-dir: OAuth
# and credential files), /data/logs. Build: docker build -t cliproxy .
FROM debian:bookworm AS build
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      build-essential cmake pkg-config libluajit-5.1-dev luajit libuv1-dev libcurl4-openssl-dev \
      libyaml-dev libssl-dev libyajl-dev libsqlite3-dev node-llhttp ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Everything CMakeLists.txt builds or installs, and nothing else (the
# install test replays this stage without an engine to keep it so).
COPY CMakeLists.txt README.md config.example.yaml ./
COPY runtime runtime
COPY lua lua
COPY data data
COPY panel panel
COPY examples/deploy examples/deploy
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr -DCPX_E2E=OFF \
 && cmake --build build -j"$(nproc)" \
 && DESTDIR=/out cmake --install build

FROM debian:bookworm-slim
RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libluajit-5.1-2 libuv1 libcurl4 libyaml-0-2 libssl3 libyajl2 libsqlite3-0 ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin cliproxy \
 && mkdir -p /etc/cliproxy /data/auths /data/logs && chown -R cliproxy:cliproxy /data
COPY --from=build /out/usr /usr
COPY examples/deploy/config.container.yaml /etc/cliproxy/config.yaml
USER cliproxy
WORKDIR /data
VOLUME ["/data/auths", "/data/logs"]
# 8317: the API; 54545, 1455, 8085, 51121, 11451: OAuth login callbacks
EXPOSE 8317 54545 1455 8085 51121 11451
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s CMD curl -fsS http://127.0.0.1:8317/healthz || exit 1
ENTRYPOINT ["/usr/bin/cliproxy"]
CMD ["-config", "/etc/cliproxy/config.yaml"]
