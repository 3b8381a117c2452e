# Sourced by the GPU scripts: `gpu_data DATA DEST` leaves CIFAR-10's cifar-10-batches-py/ under DEST and
# sets DATA_DIR to the folder to pass as --data-dir. DATA is one of
#   a folder that holds cifar-10-batches-py/                 used where it is
#   cifar-10-python.tar.gz (the dataset's own archive)       extracted into DEST (safely: npvit.data.safe_extract)
#   a JPEG archive and CONVERT=path/to/converter.py          the converter writes DEST/cifar-10-batches-py/
gpu_data() {
    local data=${1:?DATA: a folder holding cifar-10-batches-py/, or an archive of it} dest=${2:?DEST}
    if [ -d "$data/cifar-10-batches-py" ]; then DATA_DIR=$data; return; fi
    if [ ! -f "$data" ]; then echo "error: $data is neither a folder holding cifar-10-batches-py/ nor an archive" >&2; return 2; fi
    DATA_DIR=$dest
    [ -d "$dest/cifar-10-batches-py" ] && return
    mkdir -p "$dest"
    if [ -n "${CONVERT:-}" ]; then
        python3 "$CONVERT" "$dest" --archive "$data" > /dev/null
    else
        python3 -c "import sys; from npvit.data import safe_extract; safe_extract(sys.argv[1], sys.argv[2])" "$data" "$dest"
    fi
    [ -d "$dest/cifar-10-batches-py" ] || { echo "error: $data did not give $dest/cifar-10-batches-py/" >&2; return 2; }
}
