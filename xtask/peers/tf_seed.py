"""The seed network in TensorFlow, as the TF tutorial wrote it: a tf.compat.v1 graph fed
through feed_dict, Adam 1e-4, dropout keep 0.5. `cargo xtask bench` runs it beside
mnist-rs and prints one JSON line per call, with the same fields as `mnist bench`.

usage: python tf_seed.py train|eval|latency [--batch N] [--repeats R] [--warmup W]

Data are random pixels and labels: speed does not depend on them.
Setup: python3 -m venv /var/tmp/tfenv && /var/tmp/tfenv/bin/pip install tensorflow-cpu==2.21.0
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

import harness

a = harness.arguments()

tf.compat.v1.disable_eager_execution()
v1 = tf.compat.v1
x = v1.placeholder(tf.float32, [None, 784])
y_ = v1.placeholder(tf.float32, [None, 10])
keep = v1.placeholder_with_default(1.0, [])
W = lambda s: tf.Variable(v1.truncated_normal(s, stddev=0.1))
B = lambda s: tf.Variable(tf.constant(0.1, shape=s))
conv = lambda t, w: tf.nn.conv2d(t, w, strides=[1, 1, 1, 1], padding="SAME")
pool = lambda t: tf.nn.max_pool2d(t, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="SAME")
h1 = pool(tf.nn.relu(conv(tf.reshape(x, [-1, 28, 28, 1]), W([5, 5, 1, 32])) + B([32])))
h2 = pool(tf.nn.relu(conv(h1, W([5, 5, 32, 64])) + B([64])))
f1 = tf.nn.relu(tf.matmul(tf.reshape(h2, [-1, 7 * 7 * 64]), W([3136, 1024])) + B([1024]))
logits = tf.matmul(tf.nn.dropout(f1, rate=1 - keep), W([1024, 10])) + B([10])
loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_, logits=logits))
train_op = v1.train.AdamOptimizer(1e-4).minimize(loss)
predicted = tf.argmax(logits, 1)
sess = v1.Session()
sess.run(v1.global_variables_initializer())

rng = np.random.default_rng(0)
images = rng.random((10_000, 784), dtype=np.float32)
labels = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 10_000)]

def train(i):
    o = (i * a.batch) % (len(images) - a.batch)
    sess.run(train_op, {x: images[o:o + a.batch], y_: labels[o:o + a.batch], keep: 0.5})

def evaluate(_):
    for o in range(0, len(images), a.batch):
        sess.run(predicted, {x: images[o:o + a.batch]})

def latency(i):
    sess.run(predicted, {x: images[i % len(images)][None]})

harness.report(
    a,
    {"train": train, "eval": evaluate, "latency": latency},
    len(images),
    system="tensorflow",
    backend=f"tf {tf.__version__} cpu",
    device=f"cpu, {os.cpu_count()} cores, intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}",
    kernels="tf.compat.v1 graph (the seed as written)",
)
