#!/bin/sh
# Makes the compose lab's secrets in ./certs: a CA, the gateway's TLS
# certificate signed by it (for localhost and the in-network name
# "gateway"), the control plane's secret key and (split mode) the
# service token. Re-running keeps what exists. Needs openssl.
set -eu
cd "$(dirname "$0")"
mkdir -p certs
umask 077
if [ ! -f certs/ca.crt ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 825 \
		-subj "/CN=OpsConductor lab CA" -keyout certs/ca.key -out certs/ca.crt
fi
if [ ! -f certs/tls.crt ]; then
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-subj "/CN=gateway" -keyout certs/tls.key -out certs/tls.csr
	printf 'subjectAltName=DNS:gateway,DNS:localhost,IP:127.0.0.1\n' >certs/tls.ext
	openssl x509 -req -in certs/tls.csr -CA certs/ca.crt -CAkey certs/ca.key -CAcreateserial \
		-days 825 -extfile certs/tls.ext -out certs/tls.crt
	rm -f certs/tls.csr certs/tls.ext
fi
[ -f certs/secret-key ] || openssl rand -base64 32 >certs/secret-key
# Split mode (split/): the secret the services present to each other.
[ -f certs/service-token ] || openssl rand -hex 32 >certs/service-token
# nginx's master (root in its container) reads the key; the control
# plane's containers (user 65532) read the secret key and service token
# through compose secrets, so those two stay readable: a lab's trade-off.
chmod 0600 certs/tls.key certs/ca.key
chmod 0644 certs/ca.crt certs/tls.crt certs/secret-key certs/service-token
echo "certs ready in $(pwd)/certs"
