"""One training rollout of the self-classifying MNIST notebook's own model (google-research/
self-organising-systems, notebooks/mnist_ca.ipynb: CAModel, individual_l2_loss), in float64,
with every cell firing and the residual noise given, so that nca's step, loss and gradients
can be checked against it on the same weights and digits (tests/reproduction/test_mnist_notebook.py).

  python mnist_notebook_rollout.py IN.npz OUT.npz
IN holds the Keras weights k0 b0 k1 b1 k2 b2, the states x (B, 28, 28, 20), the labels y
(B, 10) and the noise (steps, B, 28, 28, 19); OUT gets the loss, the final states and the
gradient of every weight.
"""
import sys
import numpy as np
import tensorflow as tf
from tensorflow.keras.layers import Conv2D
tf.keras.backend.set_floatx("float64")
CHANNEL_N = 19
d = np.load(sys.argv[1])

class CAModel(tf.keras.Model):
  def __init__(self, channel_n=CHANNEL_N):
    super().__init__()
    self.channel_n = channel_n
    self.perceive = tf.keras.Sequential([Conv2D(80, 3, activation=tf.nn.relu, padding="SAME")])
    self.dmodel = tf.keras.Sequential([
          Conv2D(80, 1, activation=tf.nn.relu),
          Conv2D(self.channel_n, 1, activation=None, kernel_initializer=tf.zeros_initializer),
    ])
    self(tf.zeros([1, 3, 3, channel_n + 1], tf.float64), tf.zeros([1, 3, 3, channel_n], tf.float64))
  def call(self, x, manual_noise):  # the notebook's call with fire_rate 1: every cell fires
    gray, state = tf.split(x, [1, self.channel_n], -1)
    ds = self.dmodel(self.perceive(x))
    ds += manual_noise
    update_mask = tf.ones_like(x[:, :, :, :1]) > 0
    living_mask = gray > 0.1
    residual_mask = update_mask & living_mask
    ds *= tf.cast(residual_mask, tf.float64)
    state += ds
    return tf.concat([gray, state], -1)
  def classify(self, x):
    return x[:,:,:,-10:]

def to_ten_dim_label(x, y):
  y_res = np.zeros(list(x.shape) + [10])
  y_res[x >= 0.1] = np.broadcast_to(y[:, None, None], list(x.shape) + [10])[x >= 0.1]
  return y_res

ca = CAModel()
ca.perceive.layers[0].set_weights([d["k0"], d["b0"]])
ca.dmodel.layers[0].set_weights([d["k1"], d["b1"]])
ca.dmodel.layers[1].set_weights([d["k2"], d["b2"]])
def individual_l2_loss(x, y):
  t = y - ca.classify(x)
  return tf.reduce_sum(t**2, [1, 2, 3]) / 2
y = to_ten_dim_label(d["x"][..., 0], d["y"])
x = tf.constant(d["x"])
with tf.GradientTape() as g:
  for i in range(len(d["noise"])):
    x = ca(x, d["noise"][i])
  loss = tf.reduce_mean(individual_l2_loss(x, y))
grads = g.gradient(loss, ca.perceive.weights + ca.dmodel.weights)
np.savez(sys.argv[2], loss=float(loss), x=x.numpy(), **{f"g{i}": gr.numpy() for i, gr in enumerate(grads)})
