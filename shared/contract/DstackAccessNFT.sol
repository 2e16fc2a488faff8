// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC721URIStorage} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721URIStorage.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title DstackAccessNFT: one token per node of a private WireGuard network.
/// @notice wgchain's implementation of the IDstackAccessNFT interface (DESIGN.md section 1),
///         for local networks and tests. WireGuard keys belong to token OWNERS, not tokens:
///         every active token of an owner uses that owner's current key.
/// @dev Strings (node ids, keys) are stored as given and never validated here: the chain is
///      an untrusted source and wgchain's listener and registry validate what they read.
contract DstackAccessNFT is ERC721URIStorage, Ownable {
    struct NodeAccess {
        string nodeId;
        uint256 createdAt;
        bool isActive;
    }

    event NodeAccessGranted(
        uint256 indexed tokenId, string nodeId, address indexed owner, string wireguardPublicKey
    );
    event NodeAccessRevoked(uint256 indexed tokenId, string nodeId);
    event NodeAccessTransferred(uint256 indexed tokenId, address indexed from, address indexed to);
    event PublicKeyUpdated(address indexed owner, string wireguardPublicKey);

    /// The node already has an active token (`tokenId`); revoke it first.
    error NodeAlreadyActive(uint256 tokenId);
    /// Only the token's holder or the contract owner may revoke it.
    error NotHolderOrOwner(uint256 tokenId, address caller);
    /// The token was already revoked.
    error TokenNotActive(uint256 tokenId);

    uint256 private _nextTokenId = 1;
    mapping(uint256 => NodeAccess) private _access;
    mapping(string => uint256) private _activeTokenOfNode;
    mapping(address => string) private _keys;

    constructor(address initialOwner) ERC721("Dstack Node Access", "DNA") Ownable(initialOwner) {}

    /// Mint an access token for `nodeId` to `to`; a non-empty key becomes `to`'s key.
    function mintNodeAccess(
        address to,
        string calldata nodeId,
        string calldata wireguardPublicKey,
        string calldata uri
    ) external onlyOwner returns (uint256) {
        uint256 existing = _activeTokenOfNode[nodeId];
        if (existing != 0) revert NodeAlreadyActive(existing);
        uint256 tokenId = _nextTokenId++;
        _access[tokenId] = NodeAccess({nodeId: nodeId, createdAt: block.timestamp, isActive: true});
        _activeTokenOfNode[nodeId] = tokenId;
        if (bytes(wireguardPublicKey).length != 0) _keys[to] = wireguardPublicKey;
        _safeMint(to, tokenId);
        if (bytes(uri).length != 0) _setTokenURI(tokenId, uri);
        emit NodeAccessGranted(tokenId, nodeId, to, wireguardPublicKey);
        return tokenId;
    }

    /// Revoke a token (its holder or the contract owner): it stays owned but opens nothing.
    function revokeNodeAccess(uint256 tokenId) external {
        address holder = _requireOwned(tokenId);
        if (msg.sender != holder && msg.sender != owner()) {
            revert NotHolderOrOwner(tokenId, msg.sender);
        }
        NodeAccess storage access = _access[tokenId];
        if (!access.isActive) revert TokenNotActive(tokenId);
        access.isActive = false;
        delete _activeTokenOfNode[access.nodeId];
        emit NodeAccessRevoked(tokenId, access.nodeId);
    }

    /// Set the caller's WireGuard key (used by every active token the caller holds).
    function updatePublicKey(string calldata wireguardPublicKey) external {
        _keys[msg.sender] = wireguardPublicKey;
        emit PublicKeyUpdated(msg.sender, wireguardPublicKey);
    }

    function getNodeAccess(uint256 tokenId)
        external
        view
        returns (string memory nodeId, string memory wireguardPublicKey, uint256 createdAt, bool isActive)
    {
        address holder = _requireOwned(tokenId);
        NodeAccess storage access = _access[tokenId];
        return (access.nodeId, _keys[holder], access.createdAt, access.isActive);
    }

    function hasNodeAccess(address account, string calldata nodeId) public view returns (bool) {
        uint256 tokenId = _activeTokenOfNode[nodeId];
        return tokenId != 0 && _ownerOf(tokenId) == account;
    }

    function verifyAccess(address account, string calldata nodeId) external view returns (bool) {
        return hasNodeAccess(account, nodeId);
    }

    function getTokenIdByNodeId(string calldata nodeId) external view returns (uint256) {
        return _activeTokenOfNode[nodeId];
    }

    function getPublicKeyByOwner(address account) external view returns (string memory) {
        return _keys[account];
    }

    function getPublicKeyByTokenId(uint256 tokenId) external view returns (string memory) {
        return _keys[_requireOwned(tokenId)];
    }

    /// Hand the contract (minting, revoking any token) to `newOwner` (not the zero address).
    function transferContractOwnership(address newOwner) external onlyOwner {
        transferOwnership(newOwner);
    }

    /// Every transfer between two non-zero addresses also emits NodeAccessTransferred.
    function _update(address to, uint256 tokenId, address auth)
        internal
        override
        returns (address)
    {
        address from = super._update(to, tokenId, auth);
        if (from != address(0) && to != address(0)) {
            emit NodeAccessTransferred(tokenId, from, to);
        }
        return from;
    }
}
