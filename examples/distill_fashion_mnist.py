"""Distil a triplet-trained teacher into a 15× smaller student with RKD.

This is the paper's metric-learning experiment (Park et al., CVPR 2019, §4.1)
shrunk to run on a laptop CPU in a few minutes, on Fashion-MNIST:

1. A teacher learns an embedding with the triplet loss on five classes
   (T-shirt, trouser, pullover, dress, coat).
2. A much smaller student learns from the teacher alone: RKD makes it copy
   the *distances* and *angles* between the teacher's embeddings of each batch.
   It never sees a label.
3. Both are judged by Recall@K on the five classes neither has seen
   (sandal, shirt, sneaker, bag, ankle boot).

Run it:  python examples/distill_fashion_mnist.py          (about 2 minutes)
         python examples/distill_fashion_mnist.py --quick  (a smoke test)
"""

import argparse

import keras

import rkd_keras

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="a few steps only, to check that it runs")
args = parser.parse_args()
steps, epochs = (5, 1) if args.quick else (80, 4)
keras.utils.set_random_seed(0)

# Data: 28×28 grey images in [0, 255], training and evaluation classes disjoint.
# Each training batch holds 12 images of each of the 5 training classes (P×K
# sampling), so every batch has positives and negatives for the triplet loss.
train = rkd_keras.load_dataset("fashion_mnist", "train", image_size=28, channels=1, augment=False)
batches = rkd_keras.pk_batches(train.take(10_000), classes_per_batch=5, samples_per_class=12, seed=0, num_batches=steps)
test = rkd_keras.load_dataset("fashion_mnist", "test", image_size=28, channels=1).take(500 if args.quick else 2000)

# RetrievalRecall embeds the unseen classes at each epoch end and writes
# val_recall_at_1, _2, _4, _8 into the logs (History, EarlyStopping, ... see them).
recall = rkd_keras.RetrievalRecall(test.batch(256))

# 1. The teacher: a CNN with 128-d L2-normalized embeddings, trained with the
#    triplet loss and distance-weighted negative sampling, as in the paper.
teacher = rkd_keras.embedding_model("small_cnn", 128, input_shape=(28, 28, 1), width=32, name="teacher")
teacher.compile(keras.optimizers.Adam(3e-3), loss=rkd_keras.TripletLoss(margin=0.2))
print("Training the teacher with the triplet loss")
teacher.fit(batches, epochs=epochs, callbacks=[recall], verbose=2)

# 2. The student: 32-d and about 15× fewer parameters. As the paper advises,
#    its embeddings are not L2-normalized. The Distiller freezes the teacher
#    and trains the student on λ_D·RKD-D + λ_A·RKD-A with the paper's λ_D = 1,
#    λ_A = 2 and no task loss: labels in the batches are simply not used.
student = rkd_keras.embedding_model(
    "small_cnn", 32, input_shape=(28, 28, 1), width=8, l2_normalize=False, name="student"
)
distiller = rkd_keras.Distiller(teacher, student, distance_weight=1.0, angle_weight=2.0)
distiller.compile(keras.optimizers.Adam(3e-3))
# The teacher is frozen and these images are not augmented, so its embeddings
# are the same every epoch: compute them once, and every step skips the teacher.
cached = distiller.cache_teacher_embeddings(train.take(10_000))
distill_batches = rkd_keras.pk_batches(cached, classes_per_batch=5, samples_per_class=12, seed=0, num_batches=steps)
print("Distilling the student with RKD-DA")
distiller.fit(distill_batches, epochs=epochs, callbacks=[recall], verbose=2)

# 3. Recall@K on the unseen classes, side by side.
print(f"\n{'model':>8} {'params':>9} " + " ".join(f"{'R@' + str(k):>6}" for k in recall.ks))
for name, model in (("teacher", teacher), ("student", student)):
    recalls = rkd_keras.recall_at_k(*recall.embed(model), recall.ks)
    print(f"{name:>8} {model.count_params():>9,} " + " ".join(f"{100 * r:6.2f}" for r in recalls.values()))
