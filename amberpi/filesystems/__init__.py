"""File-system writers (and their read-back halves), each from a folder, none by mounting.

fat.py: FAT32 with dosfstools and mtools; iso9660.py: Rock Ridge ISO9660 with pycdlib;
ext4.py: ext4 with mkfs.ext4 -d. Every writer takes one timestamp and gives the same
bytes for the same tree.
"""
