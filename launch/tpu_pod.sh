#!/usr/bin/env bash
# Trains on a Cloud TPU pod slice: one JAX process per TPU VM host, all running the same
# `python -m latentadv.main` command. JAX reads the coordinator address and each host's process
# id from the TPU metadata; this script passes the number of hosts as --num_processes.
#
# Usage (from a machine with gcloud set up for your project):
#   BUCKET=my-bucket launch/tpu_pod.sh [MAIN_FLAGS...]     e.g. --config.optim.epochs=10
# Steps (each can be re-run; run the script again to resume an interrupted run):
#   1. create the TPU VMs (skipped if TPU_NAME exists);
#   2. copy the committed HEAD of this repository to every host and install it in a venv;
#   3. mount gs://$BUCKET on every host (Cloud Storage FUSE) for the shared workdir: orbax
#      checkpoints of a multi-host run must go to storage that every host sees;
#   4. prepare the dataset once into TFDS_DATA_DIR=gs://$BUCKET/tensorflow_datasets (tfds reads
#      gs:// directly), so the hosts do not all download it at once;
#      ImageNet: tfds cannot download it; put ILSVRC2012_img_train.tar and
#      ILSVRC2012_img_val.tar in gs://$BUCKET/imagenet_archives once, and prepare it in the
#      ArrayRecord format that the streaming pipeline reads by random access:
#        CONFIG=configs/imagenet_slat.py DATASET=imagenet2012 FILE_FORMAT=array_record \
#          RUN_NAME=imagenet_slat BUCKET=my-bucket launch/tpu_pod.sh
#      (preparing ImageNet takes hours on one host; later runs skip it);
#   5. train on all hosts at once.
# Preemption and maintenance (docs/preemption.md): a SIGTERM to the training on any host (a
# maintenance event or a preemption notice) makes every host stop at the same step and save it;
# the script then exits with status 75. A spot or preemptible TPU that was taken back has to be
# deleted and created again (step 1 creates it when TPU_NAME does not exist). Either way,
# running this script again with the same settings resumes the run from its last checkpoint.
# The TPU VMs' service account needs read/write access to the bucket.
set -euo pipefail

# --- Settings (override any of them from the environment) ---
PROJECT="${PROJECT:-$(gcloud config get-value project)}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"  # v4-32: 4 hosts with 4 chips each
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
TPU_NAME="${TPU_NAME:-latentadv}"
BUCKET="${BUCKET:?set BUCKET to a Cloud Storage bucket name (without gs://)}"
CONFIG="${CONFIG:-configs/cifar_slat.py}"
DATASET="${DATASET:-cifar10}"  # the tfds name of the config's dataset
RUN_NAME="${RUN_NAME:-cifar_slat}"
FILE_FORMAT="${FILE_FORMAT:-tfrecord}"  # array_record for config.data.pipeline='stream'
MANUAL_DIR="${MANUAL_DIR:-gs://${BUCKET}/imagenet_archives}"  # datasets tfds cannot download

TFDS_DATA_DIR="gs://${BUCKET}/tensorflow_datasets"
MOUNT='$HOME/bucket'  # expanded on the hosts
WORKDIR="${MOUNT}/runs/${RUN_NAME}"
gcloud_tpu=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")
main_flags=""
if (($#)); then
  main_flags="$(printf ' %q' "$@")"  # quoted for the hosts' shell
fi

# 1. TPU VMs.
if ! "${gcloud_tpu[@]}" describe "$TPU_NAME" > /dev/null 2>&1; then
  "${gcloud_tpu[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
    --version="$RUNTIME_VERSION"
fi
num_hosts="$("${gcloud_tpu[@]}" describe "$TPU_NAME" --format=json \
  | python3 -c 'import json, sys; print(len(json.load(sys.stdin)["networkEndpoints"]))')"
echo "TPU ${TPU_NAME}: ${ACCELERATOR_TYPE}, ${num_hosts} hosts."

# 2. Code and environment on every host.
archive="$(mktemp -d)/latentadv.tar.gz"
git -C "$(dirname "$0")/.." archive --format=tar.gz --output="$archive" HEAD
"${gcloud_tpu[@]}" scp "$archive" "${TPU_NAME}:latentadv.tar.gz" --worker=all
"${gcloud_tpu[@]}" ssh "$TPU_NAME" --worker=all --command="set -euo pipefail
  rm -rf ~/latentadv && mkdir ~/latentadv && tar -xzf ~/latentadv.tar.gz -C ~/latentadv
  sudo apt-get -qq update && sudo apt-get -qq install -y python3-venv
  python3 -m venv ~/venv
  ~/venv/bin/pip install -q -U pip
  ~/venv/bin/pip install -q -e ~/latentadv 'jax[tpu]'"

# 3. The bucket, mounted at the same path on every host.
"${gcloud_tpu[@]}" ssh "$TPU_NAME" --worker=all --command="set -euo pipefail
  if ! command -v gcsfuse > /dev/null; then
    echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] \
https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" \
      | sudo tee /etc/apt/sources.list.d/gcsfuse.list
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
      | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null
    sudo apt-get -qq update && sudo apt-get -qq install -y gcsfuse
  fi
  mkdir -p ${MOUNT}
  mountpoint -q ${MOUNT} || gcsfuse --implicit-dirs --rename-dir-limit=100000 ${BUCKET} ${MOUNT}"

# 4. The dataset, prepared once.
"${gcloud_tpu[@]}" ssh "$TPU_NAME" --worker=0 --command="set -euo pipefail
  TFDS_DATA_DIR=${TFDS_DATA_DIR} ~/venv/bin/python -c \
    'import tensorflow_datasets as tfds
tfds.builder(\"${DATASET}\", file_format=\"${FILE_FORMAT}\").download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=\"${MANUAL_DIR}\"))'"

# 5. Training: the same command on every host; the global batch is config.optim.batch_size.
status=0
"${gcloud_tpu[@]}" ssh "$TPU_NAME" --worker=all --command="set -euo pipefail
  cd ~/latentadv
  TFDS_DATA_DIR=${TFDS_DATA_DIR} ~/venv/bin/python -m latentadv.main --config=${CONFIG} \
    --workdir=${WORKDIR} --num_processes=${num_hosts}${main_flags}" || status=$?
if ((status != 0)); then
  echo "Training stopped (exit status ${status}; 75: preempted, the step reached is saved)." \
    "Run this script again with the same settings to resume." >&2
  exit "$status"
fi
echo "Done. Results: gs://${BUCKET}/runs/${RUN_NAME}/results.json"
