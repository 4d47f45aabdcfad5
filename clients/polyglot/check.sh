#!/usr/bin/env bash
# CI stage "polyglot" (issue 7): Go and Java stubs generated from protos/ and a smoke test of each
# against the live services (start a flow, read its fingerprint; it must equal a Python-started
# flow's). Installs its toolchains from Debian's packages (docs: /work/shared/TOOLS.md): Go 1.19 +
# grpc-go 1.33 built in GOPATH mode (no module proxy), Java 17 + grpc-java jars with javac (no
# Maven). Output goes to clients/polyglot/build/ (ignored by git). Needs the repository's .venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$here/build"

step() { printf -- '--- %s\n' "$*"; }

packages=(golang-go golang-google-grpc-dev golang-github-golang-protobuf-1-5-dev
  golang-google-protobuf-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler
  libgrpc-java protobuf-compiler-grpc-java-plugin libprotobuf-java libnetty-java
  libperfmark-java libgeronimo-annotation-1.3-spec-java default-jdk-headless)
if ! dpkg -s "${packages[@]}" >/dev/null 2>&1; then
  step "apt-get install (Go and Java toolchains)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
make --no-print-directory -C "$root" setup

rm -rf "$build"
mkdir -p "$build/gopath/src/flowledger/smoke" "$build/java/src" "$build/java/classes"
protos=("$root"/protos/flowledger/v1/*.proto)

step "go: generate stubs and build the smoke program"
# The protos carry no go_package option (not part of the contract); map each file here instead.
gomap=""
for f in "${protos[@]}"; do gomap+="${gomap:+,}Mflowledger/v1/$(basename "$f")=flowledger/gen/flowledgerv1"; done
protoc -I "$root/protos" --go_out="$build/gopath/src" --go_opt="$gomap" \
  --go-grpc_out="$build/gopath/src" --go-grpc_opt="$gomap" "${protos[@]}"
cp "$here/go/smoke/main.go" "$build/gopath/src/flowledger/smoke/"
(cd "$build/gopath/src/flowledger/smoke" && GO111MODULE=off GOPROXY=off GOFLAGS= \
  GOPATH="$build/gopath:/usr/share/gocode" GOCACHE="$build/gocache" go build -o "$build/go-smoke" .)

step "java: generate stubs and compile the smoke program"
jars=(grpc-api grpc-core grpc-netty grpc-protobuf grpc-protobuf-lite grpc-stub grpc-context
  protobuf guava perfmark-api geronimo-annotation-1.3-spec netty-buffer netty-codec
  netty-codec-http netty-codec-http2 netty-common netty-handler netty-handler-proxy
  netty-codec-socks netty-resolver netty-transport netty-transport-native-unix-common
  error_prone_annotations jsr305)
cp=""
for j in "${jars[@]}"; do cp+="${cp:+:}/usr/share/java/$j.jar"; done
protoc -I "$root/protos" --java_out="$build/java/src" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin --grpc-java_out="$build/java/src" \
  "${protos[@]}"
javac -nowarn -d "$build/java/classes" -cp "$cp" \
  $(find "$build/java/src" -name '*.java') "$here/java/Smoke.java"

step "smoke: go and java against python -m store_service / engine_service"
"$root/.venv/bin/python" "$here/smoke.py" \
  "go:$build/go-smoke -addr {addr} -ns {ns} -input {input}" \
  "java:java -cp $build/java/classes:$cp Smoke {addr} {ns} {input}"
