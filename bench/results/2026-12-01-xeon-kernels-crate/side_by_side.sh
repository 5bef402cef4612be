#!/bin/bash
# Side by side: the `mnist` of 33d30af (/var/tmp/mnist-old) and of the kernels-crate change
# (/var/tmp/mnist-new), alternating, flex backend; ORDER="new old" runs the new one first.
# Run twice (ORDER="old new", then ORDER="new old") for side_by_side.jsonl.
for round in 1 2 3; do
  for who in $ORDER; do
    b=/var/tmp/mnist-$who
    $b bench --backend flex train --batch 50 --repeats 100 | sed "s/^/$who r$round /"
    $b bench --backend flex train --batch 512 --repeats 6 | sed "s/^/$who r$round /"
    $b bench --backend flex eval --batch 500 --repeats 3 | sed "s/^/$who r$round /"
    $b bench --backend flex latency --repeats 300 | sed "s/^/$who r$round /"
  done
done
