#!/bin/sh
# Layout, key and bucket for deploy/compose, through Garage's admin API v2.
set -eu
api() { curl -fsS -H "Authorization: Bearer $GARAGE_ADMIN_TOKEN" -H 'Content-Type: application/json' "$@"; }
until api "$GARAGE_ADMIN/v2/GetClusterStatus" >/tmp/status.json 2>/dev/null; do sleep 1; done
node=$(sed -n 's/.*"nodes":\[{"id":"\([0-9a-f]*\)".*/\1/p' /tmp/status.json)
if ! grep -q '"role":{' /tmp/status.json; then
  api -X POST "$GARAGE_ADMIN/v2/UpdateClusterLayout" \
    -d "{\"roles\":[{\"id\":\"$node\",\"zone\":\"local\",\"capacity\":1000000000,\"tags\":[]}]}"
  api -X POST "$GARAGE_ADMIN/v2/ApplyClusterLayout" -d '{"version":1}'
fi
api -X POST "$GARAGE_ADMIN/v2/ImportKey" \
  -d "{\"accessKeyId\":\"$KEY_ID\",\"secretAccessKey\":\"$KEY_SECRET\",\"name\":\"tts-worker\"}" || true
bucket=$(api "$GARAGE_ADMIN/v2/GetBucketInfo?globalAlias=$BUCKET" 2>/dev/null \
  || api -X POST "$GARAGE_ADMIN/v2/CreateBucket" -d "{\"globalAlias\":\"$BUCKET\"}")
id=$(echo "$bucket" | sed -n 's/^{"id":"\([0-9a-f]*\)".*/\1/p')
api -X POST "$GARAGE_ADMIN/v2/AllowBucketKey" \
  -d "{\"bucketId\":\"$id\",\"accessKeyId\":\"$KEY_ID\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}"
echo "garage ready: bucket $BUCKET"
