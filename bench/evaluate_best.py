# Device script (bench/students.py): the test accuracy of the best checkpoint that
# examples/train_student.py left on the board's flash.
import json

import mcutrain as mt

loss, accuracy = mt.evaluate(mt.load("/flash/best.mtm"), mt.Dataset("/flash/test.mtd", verify=False), batch=1)
print(json.dumps({"test_loss": loss, "test_accuracy": accuracy}))
