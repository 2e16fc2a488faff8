// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// @title FleetEmitter: a whole network's grants in a few transactions, then real key rotations.
/// @notice Benchmarks only (B6). The events have exactly DstackAccessNFT's signatures, so the
///         listener decodes these logs as the contract's. Token t is node "node-<t>", owned by
///         address 0xF1EE70000000 + t; each grant carries its own key (given in calldata).
contract FleetEmitter {
    event NodeAccessGranted(
        uint256 indexed tokenId, string nodeId, address indexed owner, string wireguardPublicKey
    );
    event PublicKeyUpdated(address indexed owner, string wireguardPublicKey);

    /// Emit one grant per key, for tokens `firstToken`, `firstToken + 1`, ...
    function grants(uint256 firstToken, string[] calldata keys) external {
        for (uint256 i = 0; i < keys.length; i++) {
            uint256 t = firstToken + i;
            emit NodeAccessGranted(t, string.concat("node-", _decimal(t)), _owner(t), keys[i]);
        }
    }

    /// Token `token`'s owner sets a new key (every active token of that owner is re-keyed).
    function rotate(uint256 token, string calldata key) external {
        emit PublicKeyUpdated(_owner(token), key);
    }

    function _owner(uint256 token) private pure returns (address) {
        return address(uint160(0xF1EE70000000 + token));
    }

    function _decimal(uint256 value) private pure returns (string memory) {
        if (value == 0) return "0";
        uint256 digits;
        for (uint256 v = value; v != 0; v /= 10) digits++;
        bytes memory out = new bytes(digits);
        for (; value != 0; value /= 10) out[--digits] = bytes1(uint8(48 + (value % 10)));
        return string(out);
    }
}
