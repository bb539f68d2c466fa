"""The self-classifying MNIST notebook's own TensorFlow code (google-research/
self-organising-systems, notebooks/mnist_ca.ipynb, experiment '3 mutating', L2 loss, residual
noise), unchanged but for: data read from torchvision's MNIST/raw idx files, a seed, an
iteration count, one thread, and the notebook's eval_all (steps 1..30, the full 10k test set
in 10 batches of 1000, cells pooled per batch) at the iterations in EVAL_AT, and the
learning-rate milestones from MILESTONES (default the notebook's 30000,70000; a budget
scales them).

Run by `nca reproduce mnist-notebook` when TensorFlow is installed (pip install
'nca-cli[original]'):  python mnist_notebook.py ITERS SEED  with NCA_DATA_DIR, EVAL_AT
(comma-separated iterations) and OUT (a JSON file, rewritten after every evaluation).
Kept in the notebook's own style so that it can be read beside it line by line.
"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(int(os.environ.get("THREADS", "1")))
tf.config.threading.set_inter_op_parallelism_threads(1)
from tensorflow.keras.layers import Conv2D

ITERS = int(sys.argv[1]); SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 0
np.random.seed(SEED); tf.random.set_seed(SEED)
raw = os.path.join(os.environ["NCA_DATA_DIR"], "MNIST", "raw")
def idx(name):
    data = open(os.path.join(raw, name), "rb").read()
    dims = data[3]; shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
x_train = np.array(idx("train-images-idx3-ubyte") / 255.0).astype(np.float32)
y_train = idx("train-labels-idx1-ubyte").astype(np.int64)
x_test = np.array(idx("t10k-images-idx3-ubyte") / 255.0).astype(np.float32)
y_test = idx("t10k-labels-idx1-ubyte").astype(np.int64)

def to_ten_dim_label(x, y):
  y_res = np.zeros(list(x.shape) + [10])
  y_expanded = np.broadcast_to(y, x.T.shape).T
  y_res[x >= 0.1, y_expanded[x >= 0.1]] = 1.0
  return y_res.astype(np.float32)
y_train_pic = to_ten_dim_label(x_train, y_train)
y_test_pic = to_ten_dim_label(x_test, y_test)

CHANNEL_N = 19; BATCH_SIZE = 16; POOL_SIZE = BATCH_SIZE * 10; CELL_FIRE_RATE = 0.5
USE_PATTERN_POOL, MUTATE_POOL, ADD_NOISE = True, True, True

class CAModel(tf.keras.Model):
  def __init__(self, channel_n=CHANNEL_N, fire_rate=CELL_FIRE_RATE, add_noise=ADD_NOISE):
    super().__init__()
    self.channel_n = channel_n
    self.fire_rate = fire_rate
    self.add_noise = add_noise
    self.perceive = tf.keras.Sequential([Conv2D(80, 3, activation=tf.nn.relu, padding="SAME")])
    self.dmodel = tf.keras.Sequential([
          Conv2D(80, 1, activation=tf.nn.relu),
          Conv2D(self.channel_n, 1, activation=None, kernel_initializer=tf.zeros_initializer),
    ])
    self(tf.zeros([1, 3, 3, channel_n + 1]))
  @tf.function
  def call(self, x, fire_rate=None, manual_noise=None):
    gray, state = tf.split(x, [1, self.channel_n], -1)
    ds = self.dmodel(self.perceive(x))
    if self.add_noise:
      residual_noise = tf.random.normal(tf.shape(ds), 0., 0.02) if manual_noise is None else manual_noise
      ds += residual_noise
    if fire_rate is None:
      fire_rate = self.fire_rate
    update_mask = tf.random.uniform(tf.shape(x[:, :, :, :1])) <= fire_rate
    living_mask = gray > 0.1
    residual_mask = update_mask & living_mask
    ds *= tf.cast(residual_mask, tf.float32)
    state += ds
    return tf.concat([gray, state], -1)
  @tf.function
  def initialize(self, images):
    state = tf.zeros([tf.shape(images)[0], 28, 28, self.channel_n])
    images = tf.reshape(images, [-1, 28, 28, 1])
    return tf.concat([images, state], -1)
  @tf.function
  def classify(self, x):
    return x[:,:,:,-10:]

class SamplePool:
  def __init__(self, *, _parent=None, _parent_idx=None, **slots):
    self._parent = _parent
    self._parent_idx = _parent_idx
    self._slot_names = slots.keys()
    self._size = None
    for k, v in slots.items():
      if self._size is None:
        self._size = len(v)
      assert self._size == len(v)
      setattr(self, k, np.asarray(v))
  def sample(self, n):
    idx = np.random.choice(self._size, n, False)
    batch = {k: getattr(self, k)[idx] for k in self._slot_names}
    return SamplePool(**batch, _parent=self, _parent_idx=idx)
  def commit(self):
    for k in self._slot_names:
      getattr(self._parent, k)[self._parent_idx] = getattr(self, k)

def eval_perform_steps(ca, x, yt, num_steps):
  yt_label = tf.argmax(yt, axis=-1)
  live_mask = x[..., 0] > 0.1
  total_count = tf.reduce_sum(tf.cast(live_mask, tf.float32))
  avg_accuracy_list = []
  for _ in range(1, num_steps + 1):
    x = ca(x)
    y_label = tf.argmax(ca.classify(x), axis=-1)
    correct = tf.equal(y_label, yt_label) & live_mask
    avg_accuracy_list.append((tf.reduce_sum(tf.cast(correct, tf.float32))/total_count * 100).numpy().item())
  return avg_accuracy_list

def eval_all(ca, num_steps):
  num_batches = 10
  eval_bs = 10000 // num_batches
  accs = [eval_perform_steps(ca, ca.initialize(x_test[eval_bs*i:eval_bs*(i+1)]), y_test_pic[eval_bs*i:eval_bs*(i+1)], num_steps) for i in range(num_batches)]
  return [sum(l)/num_batches for l in zip(*accs)]

ca = CAModel()
def individual_l2_loss(x, y):
  t = y - ca.classify(x)
  return tf.reduce_sum(t**2, [1, 2, 3]) / 2
def batch_l2_loss(x, y):
  return tf.reduce_mean(individual_l2_loss(x, y))
lr = 1e-3
MILESTONES = [int(m) for m in os.environ.get("MILESTONES", "30000,70000").split(",")]
lr_sched = tf.keras.optimizers.schedules.PiecewiseConstantDecay(MILESTONES, [lr, lr*0.1, lr*0.01])
trainer = tf.keras.optimizers.Adam(lr_sched)
starting_indexes = np.random.randint(0, x_train.shape[0]-1, size=POOL_SIZE)
pool = SamplePool(x=ca.initialize(x_train[starting_indexes]).numpy(), y=y_train_pic[starting_indexes])

@tf.function
def train_step(x, y):
  iter_n = 20
  with tf.GradientTape() as g:
    for i in tf.range(iter_n):
      x = ca(x)
    loss = batch_l2_loss(x, y)
  grads = g.gradient(loss, ca.weights)
  grads = [g/(tf.norm(g)+1e-8) for g in grads]
  trainer.apply_gradients(zip(grads, ca.weights))
  return x, loss

checkpoints = sorted({int(a) for a in os.environ.get("EVAL_AT", str(ITERS)).split(",")})
start = time.time(); out = []
for i in range(1, ITERS + 1):
  batch = pool.sample(BATCH_SIZE)
  x0 = np.copy(batch.x)
  y0 = batch.y
  q_bs = BATCH_SIZE // 4
  new_idx = np.random.randint(0, x_train.shape[0]-1, size=q_bs)
  x0[:q_bs] = ca.initialize(x_train[new_idx])
  y0[:q_bs] = y_train_pic[new_idx]
  new_idx = np.random.randint(0, x_train.shape[0]-1, size=q_bs)
  new_x, new_y = x_train[new_idx], y_train_pic[new_idx]
  new_x = tf.reshape(new_x, [q_bs, 28, 28, 1])
  mutate_mask = tf.cast(new_x > 0.1, tf.float32)
  x0[-q_bs:] = tf.concat([new_x, x0[-q_bs:,:,:,1:] * mutate_mask], -1)
  y0[-q_bs:] = new_y
  x, loss = train_step(x0, y0)
  batch.x[:] = x
  batch.y[:] = y0
  batch.commit()
  if i % 100 == 0:
    print(f"iter {i} loss {float(loss):.3f} ({time.time()-start:.0f}s)", flush=True)
  if i in checkpoints:
    acc = eval_all(ca, 30)
    row = {"iteration": i, "accuracy_20_30": float(np.mean(acc[19:30])), "accuracy_by_step": acc, "seconds": time.time() - start}
    print(json.dumps({k: v for k, v in row.items() if k != "accuracy_by_step"}), flush=True)
    out.append(row)
    path = os.environ.get("OUT", "tf_mnist.json")
    json.dump(out, open(path + ".tmp", "w"))
    os.replace(path + ".tmp", path)
