#!/bin/bash
# The paper's 16 models as array indices: prints "STAGE FOLD" for index 0-15.
#   0 -> base 0;  1-5 -> wt 0-4;  6-10 -> tc 0-4;  11-15 -> et 0-4
set -euo pipefail
index=${1:?usage: model.sh INDEX (0-15)}
if (( index == 0 )); then echo "base 0"
elif (( index <= 5 )); then echo "wt $(( index - 1 ))"
elif (( index <= 10 )); then echo "tc $(( index - 6 ))"
elif (( index <= 15 )); then echo "et $(( index - 11 ))"
else echo "model.sh: index $index outside 0-15" >&2; exit 2
fi
