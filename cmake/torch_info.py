"""Print what CMakeLists.txt needs from the installed torch, one item per line."""
import torch
from torch.utils import cpp_extension

print(",".join(cpp_extension.include_paths()))
print(cpp_extension.library_paths()[0])
print(int(torch._C._GLIBCXX_USE_CXX11_ABI))
print(torch.version.cuda)
