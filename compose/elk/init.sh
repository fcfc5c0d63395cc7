#!/bin/sh
# The elk profile's one-shot init (compose service opensearch-init): the index template that keeps
# traceId, spanId and attributes.request.id as keywords, then the index pattern and saved search of
# OpenSearch Dashboards. Idempotent: a second `make up PROFILE=elk` overwrites both with the same.
set -eu
OS=http://opensearch:9200
OSD=http://opensearch-dashboards:5601
echo "index template mlobs-logs -> $OS"
curl -fsS -X PUT "$OS/_index_template/mlobs-logs" -H 'Content-Type: application/json' \
  --data-binary @/elk/index-template.json
echo
echo "saved objects (index pattern, saved search) -> $OSD"
curl -fsS -X POST "$OSD/api/saved_objects/_import?overwrite=true" -H 'osd-xsrf: true' \
  --form file=@/elk/saved-objects.ndjson
echo
