# Board entry point: runs the node from the files in the board's root directory.
from meternode import node

node.main()
