"""Train a classifier on the handwritten digits that ship with gpunn, with the Trainer API.

The seed's workflow end to end: split into train / dev / test, standardize with training
statistics only, train on the best device present, read the learning curves, ask the
bias/variance diagnosis what to do next, then save the model and load it back.

    python examples/train_digits.py [--device cpu|cuda:0] [--plot curves.png] [--save digits.safetensors]
"""

from __future__ import annotations

import argparse

import gpunn as gn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda:0 or auto (default: GPUNN_DEVICE or auto)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--plot", default="digits_curves.png", help="learning curves PNG ('' to skip)")
    parser.add_argument("--save", default="digits.safetensors", help="where to save the trained model")
    args = parser.parse_args()

    x, y = gn.data.load_digits()  # 1,797 images of 8x8 pixels, labels 0-9
    (x_train, y_train), (x_dev, y_dev), (x_test, y_test) = gn.data.split(x, y, fractions=(0.7, 0.15, 0.15), seed=0)
    scaler, x_train, x_dev, x_test = gn.data.standardize(x_train, x_dev, x_test)  # fitted on training data only

    model = gn.mlp([64, 100, 10], activation="relu", seed=0)
    trainer = gn.Trainer(
        model, gn.SoftmaxWithLoss(), gn.optim.Adam(lr=1e-3), regularizer=gn.L2(1e-4), device=args.device
    )
    print(f"training on {trainer.device}" + (f" ({gn.why_cpu()})" if trainer.device.kind == "cpu" else ""))
    history = trainer.fit(x_train, y_train, epochs=args.epochs, batch_size=32, validation_data=(x_dev, y_dev))

    test = trainer.evaluate(x_test, y_test)
    print(f"test accuracy {test['accuracy']:.4f}, test loss {test['loss']:.4f}")
    print(gn.diagnose(history))  # high bias? high variance? and what to do about it
    if args.plot:
        gn.plot_history(history, args.plot, title="digits")
        print(f"learning curves: {args.plot}")

    gn.save(args.save, model, trainer.optimizer, metadata={"scaler": scaler.state_dict()})
    reloaded = gn.load(args.save, device="cpu")  # loads on any device, whichever saved it
    same = (
        gn.Trainer(reloaded, gn.SoftmaxWithLoss(), gn.optim.SGD(), device="cpu").predict(x_test)
        == trainer.predict(x_test)
    ).all()
    print(f"saved to {args.save}; the reloaded model predicts the same: {bool(same)}")


if __name__ == "__main__":
    main()
